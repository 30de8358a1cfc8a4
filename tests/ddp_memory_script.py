"""Run by the memory tests: FTPropCallback("sign", ...) under 2-process CPU DDP (gloo), one run per argument.

    python tests/ddp_memory_script.py OUT_DIR RULE:MEMORY [RULE:MEMORY ...]   -> OUT_DIR/RULE-MEMORY-rank{0,1}.json

RULE is a rule name or ``default``, MEMORY a memory mode or ``default``; ``default`` leaves that argument out,
so ``default:default`` is ``FTPropCallback("sign")`` as users get it. The runs train one after the other in
the same two processes (one launch, one process group), each from the same seed.
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


def fit(out_dir: str, run: str) -> None:
    rule, memory = run.split(":")
    torch.manual_seed(0)
    model = TinyNet(batchnorm=True)  # Linear -> BN -> unit (z rebuilt) and Linear -> unit (z kept)
    kwargs = {key: value for key, value in (("rule", rule), ("memory", memory)) if value != "default"}
    callback = ftp.FTPropCallback("sign", log_every_n_steps=1, **kwargs)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=3,
        callbacks=[callback, record],
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
        memory=callback.spec["memory"],
        rule=callback.spec["rule"],
        params={name: p.detach().tolist() for name, p in model.named_parameters()},
        buffers={name: b.detach().tolist() for name, b in model.named_buffers()},
    )
    with open(f"{out_dir}/{rule}-{memory}-rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    for run in sys.argv[2:]:
        fit(sys.argv[1], run)
