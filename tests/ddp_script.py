"""Run by test_ddp.py: FTPropCallback under 2-process CPU DDP (gloo).

    python tests/ddp_script.py OUT_DIR      -> OUT_DIR/rank0.json, OUT_DIR/rank1.json

Lightning's "ddp" strategy re-launches this script for rank 1; Lightning picks a free port.
"""

import json
import sys

import lightning.pytorch as pl
import torch
from lightning_helpers import GradProbe, TinyNet, make_loader, reference_counts, unit_types

import lightning_ftprop as ftp


class Record(pl.Callback):
    """Placed after FTPropCallback: keeps its synced statistics and what training ran with."""

    def __init__(self, ftprop: ftp.FTPropCallback) -> None:
        self.ftprop, self.latest = ftprop, {}

    def on_train_start(self, trainer, pl_module):
        self.wrapper = type(trainer.strategy.model).__name__
        self.types = unit_types(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.latest[trainer.global_step - 1] = dict(self.ftprop.latest)


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    model = TinyNet(batchnorm=True)
    probe = GradProbe()
    ftprop = ftp.FTPropCallback("sign", "soft_hinge", log_every_n_steps=1)
    record = Record(ftprop)
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=3,
        callbacks=[probe, ftprop, record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, make_loader(n=64, batch_size=8))
    params = {name: p.detach().tolist() for name, p in model.named_parameters()}
    result = dict(
        rank=trainer.global_rank,
        layers=ftprop.layers,
        types=record.types,
        wrapper=record.wrapper,
        params=params,
        local={step: reference_counts(records) for step, records in probe.records.items()},
        latest=record.latest,
    )
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
