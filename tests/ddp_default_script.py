"""Run by test_memory_packed.py: the default FTPropCallback("sign") under 2-process CPU DDP (gloo).

    python tests/ddp_default_script.py OUT_DIR      -> OUT_DIR/{exact,default}-rank{0,1}.json

"default" is ``FTPropCallback("sign")`` with every other argument left at its default (soft_hinge,
memory=DEFAULT_MEMORY); "exact" is the same with ``memory="exact"``. Both train one after the other in
the same two processes (one launch, one process group).
"""

import json
import sys

import lightning.pytorch as pl
import torch
from lightning_helpers import TinyNet, make_loader

import lightning_ftprop as ftp


def fit(out_dir: str, mode: str) -> None:
    torch.manual_seed(0)
    model = TinyNet(batchnorm=True)  # Linear -> BN -> unit (z rebuilt) and Linear -> unit (z kept)
    kwargs = {} if mode == "default" else {"memory": mode}
    callback = ftp.FTPropCallback("sign", log_every_n_steps=1, **kwargs)
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        max_steps=3,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, make_loader(n=64, batch_size=8))
    result = dict(
        rank=trainer.global_rank,
        memory=callback.spec["memory"],
        rule=callback.spec["rule"],
        params={name: p.detach().tolist() for name, p in model.named_parameters()},
        buffers={name: b.detach().tolist() for name, b in model.named_buffers()},
    )
    with open(f"{out_dir}/{mode}-rank{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    for mode in ("exact", "default"):
        fit(sys.argv[1], mode)
