"""GPU checks that CI cannot run: the ImageNet-config smoke test on CUDA, FSDP against DDP, and memory.

    python scripts/gpu_check.py smoke OUT_DIR   # resnet18_imagenet_sign_soft_hinge, 1 GPU, bf16-mixed,
                                                # 6 steps on a synthetic ImageFolder written to OUT_DIR/data
    python scripts/gpu_check.py fsdp OUT_DIR    # FTPropCallback under FSDPStrategy ("packed", "recompute")
                                                # and FSDP2 through ModelParallelStrategy (every memory
                                                # mode) vs DDPStrategy on every visible GPU: prints the
                                                # largest parameter difference after 4 steps
    python scripts/gpu_check.py memory OUT_DIR  # torchvision resnet18 (1000 classes), 224x224, batch 32:
                                                # float / exact / packed / recompute on the fp32,
                                                # bf16-mixed and compile paths; held and peak memory and
                                                # step time, a markdown table and OUT_DIR/memory.json
    MALLOC_MMAP_THRESHOLD_=65536 python scripts/gpu_check.py memory OUT_DIR --device cpu --batch 2
                                                # a dry run on CPU at 64x64 (RSS for held memory, no peak)

``memory``: every cell (variant on a path) is a fresh model with the same seed; two warm-up steps
(the ``compile`` path compiles in them), then one measured step: ``torch.cuda.reset_peak_memory_stats()``,
``memory_allocated`` held between the end of the forward and the backward, and
``max_memory_allocated`` over the step (both above what was allocated before it), then the mean time of
a few steps (forward, backward, SGD step; ``torch.cuda.synchronize`` around them). ``exact``, ``packed``
and ``recompute`` are ``lightning_ftprop.convert(model, "sign", "soft_hinge")``; ``packed`` runs the
forward under ``lightning_ftprop.memory.packed()``, ``recompute`` is ``memory.recompute(model)`` then the
same. ``bf16-mixed`` is ``torch.autocast(device, dtype=torch.bfloat16)`` around the forward and loss
(logits ``.float()``); ``compile`` is ``torch.compile(model)``, called inside ``packed()``. Ratios are
against ``float`` on the same path. A crashing cell prints its error's first line and the run goes on.

Why a GPU script: Lightning 2.6 refuses ``FSDPStrategy`` on CPU processes ("The strategy `fsdp`
requires a GPU accelerator"), so the FSDP check of docs/distributed.md cannot run in the CPU tests.
``python -m pytest tests/test_gpu.py`` is the rest of the GPU checks (the memory contract on cuDNN, CUDA
autocast and inductor's CUDA code); benchmarks/RESULTS.md section 5 has what the last GPU run printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

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
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning_helpers import TinyNet, make_loader

    import lightning_ftprop as ftp

    class Sharded(TinyNet):  # FSDP2: fully_shard in configure_model, as ModelParallelStrategy asks
        def configure_model(self):
            from torch.distributed.fsdp import FSDPModule, fully_shard

            if not isinstance(self.net, FSDPModule):
                mesh = self.device_mesh["data_parallel"]
                for i in (0, 3, 5):
                    fully_shard(self.net[i], mesh=mesh)
                fully_shard(self.net, mesh=mesh)

    torch.manual_seed(0)
    model = (Sharded if isinstance(strategy, ModelParallelStrategy) else TinyNet)(hidden=16)
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
    full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p) for n, p in model.named_parameters()}
    return trainer.global_rank, {k: v.detach().float().cpu() for k, v in full.items()}


def fsdp(out: str) -> None:
    import torch
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    devices = torch.cuda.device_count()
    results = {}
    for name, strategy, memory in [
        ("ddp/packed", lambda: DDPStrategy(), "packed"),
        ("fsdp/packed", lambda: FSDPStrategy(state_dict_type="full"), "packed"),
        ("fsdp/recompute", lambda: FSDPStrategy(state_dict_type="full"), "recompute"),
        ("fsdp2/exact", lambda: ModelParallelStrategy(devices, 1), "exact"),
        ("fsdp2/packed", lambda: ModelParallelStrategy(devices, 1), "packed"),
        ("fsdp2/recompute", lambda: ModelParallelStrategy(devices, 1), "recompute"),
    ]:
        try:
            rank, results[name] = _fit(strategy(), memory, devices)
        except Exception as exc:  # printed, and the other strategies still run
            rank = int(os.environ.get("LOCAL_RANK", 0))
            print(f"fsdp: {name} crashed: {_first_line(exc)}", flush=True)
    if rank != 0:
        return
    reference = results["ddp/packed"]
    for name in [n for n in results if n != "ddp/packed"]:
        worst = max((results[name][k] - reference[k]).abs().max().item() for k in reference)
        equal = all(torch.equal(results[name][k], reference[k]) for k in reference)
        print(
            f"fsdp: {name} vs ddp/packed on {devices} GPU(s), {STEPS} steps: bitwise equal {equal}, max |diff| {worst:.3e}",
            flush=True,
        )


MEMORY_VARIANTS = ("float", "exact", "packed", "recompute")
MEMORY_PATHS = ("fp32", "bf16-mixed", "compile")


def _resnet18(variant: str):
    """torchvision's resnet18 (1000 classes, seed 0): unconverted for ``float``, else sign/soft_hinge."""
    import torch
    import torchvision

    import lightning_ftprop as ftp

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000)
    if variant != "float":
        ftp.convert(model, "sign", "soft_hinge")
    if variant == "recompute":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resnet18's stem unit (benchmarks/RESULTS.md)
            ftp.memory.recompute(model)
    return model


def _allocated(device) -> float:
    """Bytes allocated now: the CUDA caching allocator's count, or the process RSS on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _train_step(model, optim, x, y, variant: str, path: str, probe=None) -> None:
    """Forward (under ``packed()`` for packed/recompute, autocast on bf16-mixed), backward, SGD step."""
    import contextlib

    import torch
    import torch.nn.functional as F

    import lightning_ftprop as ftp

    ctx = ftp.memory.packed() if variant in ("packed", "recompute") else contextlib.nullcontext()
    cast = torch.autocast(x.device.type, dtype=torch.bfloat16) if path == "bf16-mixed" else contextlib.nullcontext()
    optim.zero_grad(set_to_none=False)
    with ctx, cast:
        loss = F.cross_entropy(model(x).float(), y)
    if probe is not None:
        probe()
    loss.backward()
    optim.step()


def _memory_cell(variant: str, path: str, x, y, steps: int) -> dict:
    """One variant on one path: held and peak MB of one step, and mean ms per step after warm-up."""
    import torch
    from torch._dynamo.utils import counters

    device = x.device
    model = _resnet18(variant).to(device).train()
    optim = torch.optim.SGD(model.parameters(), lr=1e-3)
    if path == "compile":
        torch._dynamo.reset()
        model = torch.compile(model)
    for _ in range(2):  # warm-up: gradients allocated; compiled (forward and backward)
        _train_step(model, optim, x, y, variant, path)
    graphs = counters["stats"]["unique_graphs"]
    cell = {}
    before = _allocated(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def probe():
        cell["held_mb"] = (_allocated(device) - before) / 2**20

    _train_step(model, optim, x, y, variant, path, probe)
    if device.type == "cuda":
        torch.cuda.synchronize()
        cell["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        cell["peak_total_mb"] = torch.cuda.max_memory_allocated() / 2**20
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(model, optim, x, y, variant, path)
    if device.type == "cuda":
        torch.cuda.synchronize()
    cell["step_ms"] = (time.perf_counter() - start) / steps * 1e3
    if counters["stats"]["unique_graphs"] != graphs:
        raise RuntimeError("a measured or timed step compiled (a recompile after the warm-up)")
    return cell


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of an error, of its innermost cause if it wraps one (compiler errors do)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _ratio_cell(cells: dict, path: str, variant: str, key: str, fmt: str) -> str:
    """A table cell: the value and its ratio to ``float`` on the same path; blank when not measured."""
    value, reference = cells[path, variant].get(key), cells[path, "float"].get(key)
    if value is None:
        return ""
    if variant == "float":
        return format(value, fmt)
    if reference is None:
        return f"{value:{fmt}} (float crashed)"
    return f"{value:{fmt}} ({value / reference:.2f}x)" if reference > 0 else f"{value:{fmt}} (n/a)"


def memory_table(cells: dict, paths, variants=MEMORY_VARIANTS) -> str:
    """The markdown table of :func:`memory_check`'s cells ``{(path, variant): {...}}``."""
    rows = [
        "| path | variant | held MB (vs float) | peak MB (vs float) | step ms (vs float) |",
        "|---|---|---|---|---|",
    ]
    for path in paths:
        for variant in variants:
            if "error" in cells[path, variant]:
                figures = [f"crash: {cells[path, variant]['error']}", "", ""]
            else:
                figures = [
                    _ratio_cell(cells, path, variant, key, fmt)
                    for key, fmt in (("held_mb", ".1f"), ("peak_mb", ".1f"), ("step_ms", ".1f"))
                ]
            rows.append(f"| {path} | {variant} | " + " | ".join(figures) + " |")
    return "\n".join(rows)


def memory_check(out: str, batch: int = 32, device: str = "cuda", size: int = 224, paths=MEMORY_PATHS, steps: int = 5):
    """Held memory, peak memory and step time of resnet18's memory modes on each path (module docstring)."""
    import torch

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", f"/tmp/lightning_ftprop_inductor_{os.getuid()}")
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"memory: resnet18, batch {batch}, {size}x{size}, {name}, torch {torch.__version__}", flush=True)
    cells = {}
    for path in paths:
        for variant in MEMORY_VARIANTS:
            start = time.perf_counter()
            try:
                cells[path, variant] = _memory_cell(variant, path, x, y, steps)
            except Exception as exc:  # printed and kept in the table, and the run goes on
                cells[path, variant] = {"error": _first_line(exc)}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            done = cells[path, variant].get("error", "ok")
            print(f"memory: {path} {variant}: {done} ({time.perf_counter() - start:.0f} s)", flush=True)
            _write(out, name, batch, size, cells, [p for p in paths if all((p, v) in cells for v in MEMORY_VARIANTS)])
    print(memory_table(cells, paths))
    return cells


def _write(out: str, device: str, batch: int, size: int, cells: dict, paths) -> None:
    """OUT_DIR/memory.json after every cell, so a run stopped by its time limit keeps what it measured."""
    import torch

    config = dict(model="resnet18", classes=1000, batch=batch, size=size, device=device, torch=torch.__version__)
    table = memory_table(cells, paths)
    result = dict(config=config, cells=[dict(path=p, variant=v, **c) for (p, v), c in cells.items()], table=table)
    with open(os.path.join(out, "memory.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", choices=["smoke", "fsdp", "memory"])
    parser.add_argument("out_dir")
    parser.add_argument("--batch", type=int, default=32, help="memory: the batch (default 32)")
    parser.add_argument("--device", default="cuda", help="memory: cuda, or cpu for a dry run at 64x64")
    parser.add_argument("--size", type=int, default=0, help="memory: image side (default 224; 64 on cpu)")
    parser.add_argument("--paths", nargs="+", default=list(MEMORY_PATHS), choices=MEMORY_PATHS, help="memory")
    parser.add_argument("--steps", type=int, default=5, help="memory: timed steps after the measured one")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.check == "memory":
        size = args.size or (224 if args.device.startswith("cuda") else 64)
        memory_check(args.out_dir, args.batch, args.device, size, list(dict.fromkeys(args.paths)), args.steps)
    else:
        {"smoke": smoke, "fsdp": fsdp}[args.check](args.out_dir)
