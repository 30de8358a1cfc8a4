"""GPU checks that CI cannot run: the ImageNet-config smoke test on CUDA and FSDP against DDP.

    python scripts/gpu_check.py smoke OUT_DIR   # resnet18_imagenet_sign_soft_hinge, 1 GPU, bf16-mixed,
                                                # 6 steps on a synthetic ImageFolder written to OUT_DIR/data
    python scripts/gpu_check.py fsdp OUT_DIR    # FTPropCallback, memory "packed" and "recompute", under
                                                # FSDPStrategy vs DDPStrategy on every visible GPU:
                                                # prints the largest parameter difference after 4 steps

Why a GPU script: Lightning 2.6 refuses ``FSDPStrategy`` on CPU processes ("The strategy `fsdp`
requires a GPU accelerator"), so the FSDP check of docs/distributed.md cannot run in the CPU tests.
Status: written for the day a GPU is available; not yet run (no GPU was available when it was written).
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def smoke(out: str) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from disk_formats import write_image_folder  # JPEGs in train/<class>/ and val/<class>/

    data = os.path.join(out, "data")
    write_image_folder(
        data, classes=[f"n{i:08d}" for i in range(4)], per_class={"train": 24, "val": 8}, size=(256, 256)
    )
    command = [
        sys.executable, "-m", "lightning_ftprop.cli", "fit",
        "--config", "resnet18_imagenet_sign_soft_hinge",
        f"--data.data_dir={data}", "--data.global_batch_size=null", "--data.batch_size=16", "--data.num_workers=2",
        "--model.num_classes=4",
        "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed",
        "--trainer.max_steps=6", "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    print("smoke: resnet18 ImageNet config trained 6 steps on CUDA in bf16-mixed")


def _fit(strategy, memory: str, devices: int):
    import lightning.pytorch as pl
    import torch
    from lightning_helpers import TinyNet, make_loader

    import lightning_ftprop as ftp

    torch.manual_seed(0)
    model = TinyNet(hidden=16)
    trainer = pl.Trainer(
        accelerator="gpu",
        strategy=strategy,
        devices=devices,
        max_steps=STEPS,
        callbacks=[ftp.FTPropCallback("sign", "soft_hinge", memory=memory, log_every_n_steps=1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, make_loader(n=64, batch_size=8))
    state = trainer.strategy.lightning_module_state_dict()  # FSDP "full": the unsharded parameters on rank 0
    return trainer.global_rank, {k: v.detach().float().cpu() for k, v in state.items()}


def fsdp(out: str) -> None:
    import torch
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    devices = torch.cuda.device_count()
    results = {}
    for name, strategy, memory in [
        ("ddp/packed", DDPStrategy(), "packed"),
        ("fsdp/packed", FSDPStrategy(state_dict_type="full"), "packed"),
        ("fsdp/recompute", FSDPStrategy(state_dict_type="full"), "recompute"),
    ]:
        rank, results[name] = _fit(strategy, memory, devices)
    if rank != 0:
        return
    reference = results["ddp/packed"]
    for name in ("fsdp/packed", "fsdp/recompute"):
        worst = max((results[name][k] - reference[k]).abs().max().item() for k in reference)
        equal = all(torch.equal(results[name][k], reference[k]) for k in reference)
        print(
            f"fsdp: {name} vs ddp/packed on {devices} GPU(s), {STEPS} steps: bitwise equal {equal}, max |diff| {worst:.3e}"
        )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("smoke", "fsdp"):
        sys.exit("usage: python scripts/gpu_check.py smoke|fsdp OUT_DIR")
    os.makedirs(sys.argv[2], exist_ok=True)
    {"smoke": smoke, "fsdp": fsdp}[sys.argv[1]](sys.argv[2])
