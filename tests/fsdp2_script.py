"""Run by test_fsdp2.py: FSDP2 (``fully_shard`` under Lightning's ModelParallelStrategy), 2 CPU processes (gloo).

    python tests/fsdp2_script.py OUT_DIR RUN [RUN ...]      -> OUT_DIR/RUN-rank{0,1}.json

RUN is ``ddp``, the reference (``strategy="ddp"``, FTPropCallback("sign")), or ``fsdp2-callback-MEMORY``
or ``fsdp2-mixin-MEMORY``, or ``fsdp2-resume-MEMORY`` (stop after STOP steps, save a distributed checkpoint,
resume it in a new Trainer). Every run trains STEPS steps from the same seed on the same data, one after the
other in the same two processes (one launch, one process group).
"""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning_helpers import TinyNet, make_loader, unit_types
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.utils.data import DataLoader, TensorDataset

import lightning_ftprop as ftp
from lightning_ftprop.memory.recompute import is_recomputed

STEPS, STOP = 4, 2  # 2 batches of 8 an epoch on each rank, so STOP ends the first epoch


class RankData(pl.LightningDataModule):
    """Each rank its own 16 samples, the same each epoch (no sampler, no shuffle): a resumed run sees what
    the uninterrupted one saw, and the DDP reference the same as FSDP2."""

    def train_dataloader(self):
        return make_loader(n=16, batch_size=8, seed=self.trainer.global_rank)


def shard(net: torch.nn.Sequential, mesh) -> None:
    """Each Linear its own FSDP2 unit, the rest (BatchNorm) in the Sequential's."""
    if not isinstance(net, FSDPModule):  # configure_model is idempotent
        for layer in (net[0], net[3], net[5]):
            fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)


class ShardedNet(TinyNet):
    def configure_model(self):
        shard(self.net, self.device_mesh["data_parallel"])


class ShardedMixinNet(ftp.FTPropMixin, TinyNet):
    def __init__(self, ftprop=None):
        super().__init__(batchnorm=True)
        self.save_hyperparameters()

    def configure_model(self):
        shard(self.net, self.device_mesh["data_parallel"])


class ShardedResNet(pl.LightningModule):
    """torchvision's resnet18 (2 classes) at 16x16, each BasicBlock its own FSDP2 unit: under recompute
    the blocks are checkpointed segments and the stem's calls are re-run one by one."""

    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=2)

    def configure_model(self):
        if not isinstance(self.net, FSDPModule):
            mesh = self.device_mesh["data_parallel"]
            for stage in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
                for block in stage:
                    fully_shard(block, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ImageData(pl.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.trainer.global_rank)
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 2, (8,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=4)


class Record(pl.Callback):
    """The units, the FSDP2 modules and the diagnostics' synced statistics of every step.

    The statistics are read at the next batch's start (or the end): the mixin's FTPropDiagnostics comes
    from ``configure_callbacks``, after this callback, so at this callback's batch end it has not run yet.
    """

    def __init__(self):
        self.latest, self._step = {}, None

    def on_train_start(self, trainer, pl_module):
        self.types = unit_types(pl_module)
        self.sharded = sorted(name for name, m in pl_module.named_modules() if isinstance(m, FSDPModule))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._step = trainer.global_step - 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._read(trainer)

    def on_train_end(self, trainer, pl_module):
        self._read(trainer)

    def _read(self, trainer):
        if self._step is not None:
            (diagnostics,) = [c for c in trainer.callbacks if isinstance(c, ftp.parts.FTPropParts)]
            self.latest[self._step], self._step = dict(diagnostics.latest), None


def trainer(strategy, callbacks, max_steps, enable_checkpointing=False):
    return pl.Trainer(
        accelerator="cpu",
        strategy=strategy,
        devices=2,
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=enable_checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )


def fsdp2():
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)


def fit(out_dir: Path, run: str) -> None:
    kind, _, memory = run.partition("-")[2].rpartition("-") if run != "ddp" else ("ddp", "", "default")
    torch.manual_seed(0)
    spec = {"activation": "sign", "log_every_n_steps": 1}
    if memory != "default":
        spec["memory"] = memory
    if kind == "resnet":
        model = ShardedResNet()
        callback = ftp.FTPropCallback(**spec)
        record = Record()
        callbacks = [callback, record]
    elif kind == "mixin":
        model, record = ShardedMixinNet(ftprop=spec), Record()
        callbacks = [record]
    else:
        model = (TinyNet if kind == "ddp" else ShardedNet)(batchnorm=True)
        callback = ftp.FTPropCallback(**spec)
        record = Record()
        callbacks = [callback, record]
    loader = ImageData() if kind == "resnet" else RankData()
    ckpt_path = None
    if kind == "resume":  # the uninterrupted run saves at STOP (each rank its shard); resume into another seed
        save = ModelCheckpoint(dirpath=out_dir, filename=run + "-{step}", every_n_train_steps=STOP, save_top_k=-1)
        trainer(fsdp2(), callbacks + [save], STEPS, enable_checkpointing=True).fit(model, loader)
        ckpt_path = out_dir / f"{run}-step={STOP}.ckpt"
        torch.manual_seed(1)
        model = ShardedNet(batchnorm=True)
        callback = ftp.FTPropCallback(**spec)
        record = Record()
        callbacks = [callback, record]
    t = trainer("ddp" if kind == "ddp" else fsdp2(), callbacks, STEPS)
    t.fit(model, loader, ckpt_path=ckpt_path)
    params = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().tolist()
              for name, p in model.named_parameters()}  # fmt: skip
    result = dict(
        rank=t.global_rank,
        wrapper=type(t.strategy.model).__name__,
        types=record.types,
        sharded=record.sharded,
        recomputed=is_recomputed(model),
        checkpoint=sorted(p.name for p in ckpt_path.iterdir()) if ckpt_path else None,
        params=params,
        latest=record.latest,
    )
    (out_dir / f"{run}-rank{t.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    for run in sys.argv[2:]:
        fit(Path(sys.argv[1]), run)
