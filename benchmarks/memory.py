"""Training memory and step time of the memory modes (``exact``, ``packed``, ``recompute``) against ReLU.

Three measurements, side by side in one run:

1. **Held memory**: what one training step holds between the end of the forward and the backward.
   Each variant runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (large tensors go back
   to the OS when freed); after one warm-up step (weights, gradients and allocator settle), the process
   RSS is read from ``/proc/self/statm`` before the forward and after it, before the backward. The
   figure is the difference. On a GPU the same workers report ``torch.cuda.memory_allocated`` held
   across the forward and ``torch.cuda.max_memory_allocated`` over the step.
2. **Step time** (forward + backward + SGD step) against ReLU, all variants of a network in one process,
   alternating rounds; per variant the fastest round's mean process CPU time (steady on a shared machine).
3. **Largest batch under a budget**: the biggest batch (bisection over held memory, fresh process per
   probe) whose held memory stays within ``--budget-mb``, for ReLU, ``packed`` and ``recompute`` with
   the default rule.

Every rule is measured (``--rules`` to choose), and the default rule (``soft_hinge``, what
``FTPropCallback("sign")`` trains) is reported first: a figure measured with another rule is labelled
with it.
4. **Accuracy** (``--accuracy``): the demo's convnet4 on the embedded Fashion-MNIST subset, one epoch,
   seed 0, sign/sste through ``FTPropCallback``, once with ``memory="exact"`` and once with
   ``memory="recompute"``; the test accuracies must agree to the last digit.

``resnet18+stem`` is resnet18 with its stem (conv1, bn1, relu, maxpool) regrouped as one
``nn.Sequential``: the layout the first ``recompute`` (which segmented only ``nn.Sequential``) needed to
cover the stem. :func:`~lightning_ftprop.memory.recompute` now works from the module calls, so plain
``resnet18`` (torchvision's, unmodified) should hold the same; the row stays for comparison.
``timm_resnet18``, ``bert`` and ``gpt2`` (:func:`third_party`) are models as their authors wrote them,
converted by ``convert`` and nothing else; their float twin keeps the authors' ReLU/GELU.

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/memory.py            # everything, every rule (about 40 min)
    python benchmarks/memory.py --nets convnet4 --rules soft_hinge --skip-time --skip-budget
    python benchmarks/memory.py --accuracy                                # only the accuracy check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from typing import Dict, List

import torch
import torch.nn.functional as F

from lightning_ftprop import memory
from lightning_ftprop.memory import DEFAULT_MEMORY
from lightning_ftprop.models import get_model
from lightning_ftprop.rules import DEFAULT_RULE, available_rules

NETS = {  # name -> (input shape without batch, batch, classes)
    "convnet4": ((3, 32, 32), 128, 10),
    "convnet8": ((3, 32, 32), 128, 10),
    "resnet18": ((3, 64, 64), 32, 100),
    "alexnet_dorefa": ((3, 224, 224), 8, 100),
    "resnet18+stem": ((3, 64, 64), 32, 100),
}
#: Models as people write them, unmodified (see :func:`third_party`): name -> (input shape, batch, classes).
THIRD_PARTY = {
    "timm_resnet18": ((3, 64, 64), 32, 100),
    "bert": ((128,), 16, 128),  # 4 layers, hidden 128, sequence 128; token ids in, the [CLS] state as logits
    "gpt2": ((128,), 16, 128),  # the same sizes; the first position's state as logits
}
NETS.update(THIRD_PARTY)
#: variant -> (activation, memory mode); the threshold variants use ``--activation``/``--rule``.
VARIANTS = ("relu", "exact", "packed", "recompute")


def _sequential_stem(model: torch.nn.Module) -> torch.nn.Module:
    """resnet18 with conv1-bn1-relu-maxpool as one nn.Sequential (same computation, new state_dict keys)."""
    model.conv1 = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    model.bn1, model.maxpool = torch.nn.Identity(), torch.nn.Identity()
    model.relu = torch.nn.Identity()  # the stem's unit now lives in conv1; the blocks have their own
    return model


class _FirstState(torch.nn.Module):
    """A Hugging Face encoder/decoder as a classifier: token ids -> its first position's last hidden state."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).last_hidden_state[:, 0]


def third_party(net: str) -> torch.nn.Module:
    """An unmodified timm or Hugging Face model (random init, offline): ReLU/GELU as their authors wrote them."""
    if net == "timm_resnet18":
        import timm

        return timm.create_model("resnet18", num_classes=NETS[net][2])
    import transformers

    sizes = dict(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4)
    if net == "bert":
        config = transformers.BertConfig(**sizes, intermediate_size=512, max_position_embeddings=128)
        return _FirstState(transformers.BertModel(config))
    config = transformers.GPT2Config(vocab_size=1000, n_embd=128, n_layer=4, n_head=4, n_positions=128)
    return _FirstState(transformers.GPT2Model(config))


def inputs(net: str, batch: int, device="cpu"):
    """A batch ``(x, y)`` for ``net``: images, or token ids for the Hugging Face models."""
    shape, _, classes = NETS[net]
    if net in ("bert", "gpt2"):
        x = torch.randint(0, 1000, (batch, *shape), device=device)
    else:
        x = torch.randn(batch, *shape, device=device)
    return x, torch.randint(0, classes, (batch,), device=device)


def build(net: str, variant: str, activation: str, rule: str, steps: int) -> torch.nn.Module:
    kwargs = {"steps": steps} if activation == "qrelu" else {}
    if net in THIRD_PARTY:
        model = third_party(net)
        if variant != "relu":
            from lightning_ftprop import convert

            convert(model, activation, rule, **kwargs)
        if variant == "recompute":
            memory.recompute(model)
        return model
    stem = net.endswith("+stem")
    net = net.removesuffix("+stem")
    if variant == "relu":
        model = get_model(net, activation="relu", num_classes=NETS[net][2])
        return _sequential_stem(model) if stem else model
    model = get_model(net, activation=activation, rule=rule, num_classes=NETS[net][2], **kwargs)
    if stem:
        model = _sequential_stem(model)
    if variant == "recompute":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resnet18's stem unit: reported in RESULTS.md
            memory.recompute(model)
    return model


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, probe=None) -> None:
    ctx = memory.packed() if mode in ("packed", "recompute") else _null()
    with ctx:
        loss = F.cross_entropy(model(x), y)
    if probe is not None:
        probe()
    loss.backward()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> Dict[str, float]:
    """One variant in this (fresh) process: held memory of one step."""
    import gc

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, variant = args.worker
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(net, variant, args.activation, args.rule, args.steps).to(device).train()
    x, y = inputs(net, args.batch, device)
    mode = "exact" if variant == "relu" else variant
    for _ in range(2):  # warm-up: gradients allocated, allocator settled
        model.zero_grad(set_to_none=False)
        step(model, x, y, mode)
    model.zero_grad(set_to_none=False)
    gc.collect()
    out: Dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()

        def probe():
            torch.cuda.synchronize()
            out["held_mb"] = (torch.cuda.memory_allocated() - before) / 2**20

        step(model, x, y, mode, probe)
        torch.cuda.synchronize()
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = _rss()

        def probe():
            out["held_mb"] = (_rss() - before) / 2**20

        step(model, x, y, mode, probe)
    return out


def held(net: str, variant: str, batch: int, args: argparse.Namespace) -> Dict[str, float]:
    """Run :func:`worker` in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", net, variant, "--batch", str(batch)]
    cmd += ["--activation", args.activation, "--rule", args.rule, "--steps", str(args.steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {net} {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_times(net: str, args: argparse.Namespace) -> Dict[str, float]:
    """Mean CPU seconds per training step of each variant; the fastest of ``--rounds`` alternating rounds."""
    torch.set_num_threads(1)
    batch = args.time_batch or NETS[net][1]
    models, optims = {}, {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        models[variant] = build(net, variant, args.activation, args.rule, args.steps).train()
        optims[variant] = torch.optim.SGD(models[variant].parameters(), lr=1e-3)
    x, y = inputs(net, batch)
    best = {v: float("inf") for v in VARIANTS}
    for round_ in range(args.rounds + 1):
        for variant in VARIANTS:
            mode = "exact" if variant == "relu" else variant
            start = time.process_time()
            for _ in range(args.iters):
                optims[variant].zero_grad()
                step(models[variant], x, y, mode)
                optims[variant].step()
            if round_:  # round 0 warms up
                best[variant] = min(best[variant], (time.process_time() - start) / args.iters)
    return best


def largest_batch(net: str, variant: str, budget_mb: float, args: argparse.Namespace) -> int:
    """The largest batch whose held memory is within ``budget_mb`` (bisection, fresh process per probe)."""
    lo, hi = 0, 8
    while held(net, variant, hi, args)["held_mb"] <= budget_mb:
        lo, hi = hi, hi * 2
        if hi > args.max_batch:
            return -lo  # at least lo: the search stops at --max-batch
    while hi - lo > max(1, lo // 32):  # within about 3%
        mid = (lo + hi) // 2
        if held(net, variant, mid, args)["held_mb"] <= budget_mb:
            lo = mid
        else:
            hi = mid
    return lo


def accuracy(mode: str, seed: int = 0) -> float:
    """One epoch of the demo's convnet4 (embedded Fashion-MNIST, Adam 1e-3, batch 128), test accuracy."""
    import lightning.pytorch as pl

    from lightning_ftprop import FTPropCallback
    from lightning_ftprop.data import EmbeddedFashionMNISTDataModule
    from lightning_ftprop.module import ImageClassifier

    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier("convnet4", activation="relu", num_classes=10, in_channels=1, optimizer="adam", lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[FTPropCallback("sign", "sste", memory=mode, log_every_n_steps=0, histogram_every_n_steps=0)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = EmbeddedFashionMNISTDataModule(batch_size=128)
    trainer.fit(model, datamodule=data)
    return float(trainer.callback_metrics["val/acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--time-nets", nargs="+", default=["convnet4", "convnet8", "resnet18", "alexnet_dorefa"])
    parser.add_argument("--activation", default="sign", choices=["sign", "step", "qrelu"])
    parser.add_argument(
        "--rules",
        nargs="+",
        default=available_rules(),
        choices=available_rules(),
        help="the rules to measure (default: every rule; the default rule is reported first)",
    )
    parser.add_argument("--rule", default=DEFAULT_RULE, help=argparse.SUPPRESS)  # a worker's rule
    parser.add_argument("--steps", type=int, default=3, help="qrelu steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--time-batch", type=int, default=0, help="batch for step time (default: the net's)")
    parser.add_argument("--budget-mb", type=float, default=64.0)
    parser.add_argument("--budget-nets", nargs="+", default=["convnet4", "resnet18"], choices=list(NETS))
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--skip-held", action="store_true")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-budget", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="only the one-epoch accuracy check")
    parser.add_argument("--worker", nargs=2, metavar=("NET", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    if args.accuracy:
        found = {mode: accuracy(mode) for mode in ("exact", "recompute")}
        print("| memory | test accuracy (convnet4, sign/sste, 1 epoch, seed 0) |\n|---|---|")
        for mode, acc in found.items():
            print(f"| {mode} | {acc!r} |")
        print("identical" if found["exact"] == found["recompute"] else "DIFFERENT")
        return

    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rules = _ordered_rules(args.rules)
    steps = f" steps={args.steps}" if args.activation == "qrelu" else ""
    print(f"# benchmarks/memory.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, device {device}")
    print(f"# torch {torch.__version__}; threshold unit {args.activation}{steps}, rules {', '.join(rules)}; 1 thread")
    print(f"# the default: FTPropCallback({args.activation!r}) = rule {DEFAULT_RULE!r}, memory={DEFAULT_MEMORY!r}\n")

    print("## Held memory between forward and backward (MB; ratio to ReLU), the default rule first")
    print("| network | batch | input | rule | relu | exact | packed | recompute |")
    print("|---|---|---|---|---|---|---|---|")
    relu: Dict[str, float] = {}
    for rule in [] if args.skip_held else rules:
        args.rule = rule
        for net in args.nets:
            shape, batch, _ = NETS[net]
            if net not in relu:
                relu[net] = held(net, "relu", batch, args)["held_mb"]
            found = {v: held(net, v, batch, args)["held_mb"] for v in VARIANTS[1:]}
            cells = [f"{relu[net]:.1f}"] + [f"{found[v]:.1f} ({found[v] / relu[net]:.2f}x)" for v in VARIANTS[1:]]
            size = "x".join(map(str, shape[1:] or shape))
            print(f"| {net} | {batch} | {size} | {_label(rule)} | " + " | ".join(cells) + " |", flush=True)

    if not args.skip_time:
        print("\n## Step time (CPU s per step, fastest round; ratios), the default rule first")
        print(
            "| network | batch | rule | relu | exact | packed | recompute | packed/exact "
            "| throughput of packed vs relu | recompute/relu |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for rule in rules:
            args.rule = rule
            for net in [n for n in args.time_nets if n in args.nets]:
                t = step_times(net, args)
                cells = " | ".join(f"{t[v]:.3f}" for v in VARIANTS)
                batch = args.time_batch or NETS[net][1]
                ratios = f"{t['packed'] / t['exact']:.2f}x | {t['relu'] / t['packed']:.2f}x | {t['recompute'] / t['relu']:.2f}x"
                print(f"| {net} | {batch} | {_label(rule)} | {cells} | {ratios} |", flush=True)

    if not args.skip_budget:
        args.rule = rules[0]
        print(f"\n## Largest batch whose held memory fits {args.budget_mb:.0f} MB ({_label(rules[0])})")
        print("| network | relu | packed | recompute | gain of recompute |")
        print("|---|---|---|---|---|")
        for net in args.budget_nets:
            found: List[int] = [largest_batch(net, v, args.budget_mb, args) for v in ("relu", "packed", "recompute")]
            cells = [f">= {-b}" if b < 0 else str(b) for b in found]
            gain = abs(found[2]) / max(abs(found[0]), 1)
            print(f"| {net} | {' | '.join(cells)} | {'>= ' if found[2] < 0 else ''}{gain:.1f}x |", flush=True)


def _ordered_rules(rules: List[str]) -> List[str]:
    """The rules to measure, the default rule first."""
    return sorted(dict.fromkeys(rules), key=lambda r: r != DEFAULT_RULE)


def _label(rule: str) -> str:
    return f"**{rule} (default)**" if rule == DEFAULT_RULE else rule


if __name__ == "__main__":
    main()
