"""Run by test_fsdp.py: FTPropCallback under 2-process CPU FSDP (gloo) against the same run under DDP.

    python tests/fsdp_script.py OUT_DIR      -> OUT_DIR/<strategy>_<memory>.pt (rank 0: the parameters)

One process pair runs the three fits in turn (Lightning re-launches this script for rank 1 at the first
fit and reuses the process group): DDP with memory="packed", then FSDP with "packed" and "recompute".
FSDP's full state dict is gathered on rank 0 for the comparison.
"""

import os
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning_helpers import TinyNet, make_loader

import lightning_ftprop as ftp

STEPS = 4


def fit(strategy, memory: str) -> dict:
    torch.manual_seed(0)
    model = TinyNet(hidden=16)
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy=strategy,
        devices=2,
        max_steps=STEPS,
        callbacks=[ftp.FTPropCallback("sign", "soft_hinge", memory=memory, log_every_n_steps=1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, make_loader(n=64, batch_size=8))
    state = trainer.strategy.lightning_module_state_dict()  # FSDP: the full, unsharded parameters on rank 0
    return trainer.global_rank, {k: v.detach().clone() for k, v in state.items()}


def main(out_dir: str) -> None:
    for name, strategy, memory in [
        ("ddp_packed", DDPStrategy(), "packed"),
        ("fsdp_packed", FSDPStrategy(state_dict_type="full"), "packed"),
        ("fsdp_recompute", FSDPStrategy(state_dict_type="full"), "recompute"),
    ]:
        rank, params = fit(strategy, memory)
        if rank == 0:
            torch.save(params, os.path.join(out_dir, f"{name}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
