"""Run by test_memory_lightning.py: FTPropCallback(memory=...) under 2-process CPU DDP (gloo).

    python tests/ddp_memory_script.py OUT_DIR      -> OUT_DIR/{exact,recompute}-rank{0,1}.json

Both modes train one after the other in the same two processes (one launch, one process group).
"""

import json
import sys

import lightning.pytorch as pl
import torch
from lightning_helpers import TinyNet, make_loader

import lightning_ftprop as ftp


class Record(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.wrapper = type(trainer.strategy.model).__name__
        self.recomputed = "forward" in pl_module.net.__dict__


def fit(out_dir: str, memory: str) -> None:
    torch.manual_seed(0)
    model = TinyNet(batchnorm=True)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=3,
        callbacks=[ftp.FTPropCallback("sign", "sste", memory=memory, log_every_n_steps=1), record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, make_loader(n=64, batch_size=8))
    result = dict(
        rank=trainer.global_rank,
        wrapper=record.wrapper,
        recomputed=record.recomputed,
        params={name: p.detach().tolist() for name, p in model.named_parameters()},
    )
    with open(f"{out_dir}/{memory}-rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    for mode in ("exact", "recompute"):
        fit(sys.argv[1], mode)
