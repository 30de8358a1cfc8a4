"""Training memory and step time of the memory modes (``exact``, ``packed``, ``recompute``) against ReLU.

Three measurements, side by side in one run, each on every path of ``--paths``:

1. **Held memory**: what one training step holds between the end of the forward and the backward.
   Each variant runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (large tensors go back
   to the OS when freed); after two warm-up steps (weights, gradients and allocator settle; on the
   ``compile`` path they also compile), the process RSS is read from ``/proc/self/statm`` before the
   forward and after it, before the backward. The figure is the difference. On a GPU the same workers
   report ``torch.cuda.memory_allocated`` held across the forward and ``torch.cuda.max_memory_allocated``
   over the step.
2. **Step time** (forward + backward + SGD step) against ReLU, all variants of a network in one process,
   alternating rounds of ``--iters`` steps; per variant the median over ``--rounds`` rounds of the round's
   mean process CPU time. On a machine whose speed drifts (the 2-core VM of RESULTS.md drifts by 5-10%
   within minutes), the median of short alternating rounds is steadier than the fastest of a few long ones.
3. **Largest batch under a budget**: the biggest batch (bisection over held memory, fresh process per
   probe) whose held memory stays within ``--budget-mb``, for ReLU, ``packed`` and ``recompute`` with
   the default rule.

The **paths** (``--paths``, default ``eager``) are the ways people train; every variant, the ReLU twin
included, runs on the same path, and ratios are against the ReLU twin on that path:

- ``eager``: fp32, no compiler.
- ``bf16``: ``torch.autocast(device_type, dtype=torch.bfloat16)`` around the forward and the loss; the
  logits are cast back with ``.float()`` before ``cross_entropy``.
- ``compile``: ``torch.compile(model)`` (inductor); ``packed``/``recompute`` call the compiled model
  inside ``memory.packed()``, entered outside the compiled region. The warm-up steps compile (into
  ``TORCHINDUCTOR_CACHE_DIR``, a directory under /tmp); the measured step does not.

A variant that crashes on a path is reported as ``crash: <the first line of its error>`` (of the
innermost cause, for compiler errors that wrap one) and the run goes on.

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
    python benchmarks/memory.py --nets convnet4 --rules soft_hinge --paths eager bf16 compile --skip-time --skip-budget
    python benchmarks/memory.py --accuracy                                # only the accuracy check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
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
#: How a step runs (see the module docstring).
PATHS = ("eager", "bf16", "compile")
#: Where inductor caches what it compiles (workers inherit it).
INDUCTOR_CACHE = f"/tmp/lightning_ftprop_inductor_{os.getuid()}"


class Crash(Exception):
    """A variant that crashed on a path; the message is the first line of its error."""


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


def build(net: str, variant: str, activation: str, rule: str, thresholds: int) -> torch.nn.Module:
    kwargs = {"thresholds": thresholds} if activation == "qrelu" else {}
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


def on_path(model: torch.nn.Module, path: str) -> torch.nn.Module:
    """The model as trained on ``path``: compiled (inductor) for ``compile``, itself otherwise."""
    return torch.compile(model) if path == "compile" else model


def step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, probe=None, path="eager") -> None:
    """One forward and backward; ``packed()`` is entered outside the (possibly compiled) model's call."""
    ctx = memory.packed() if mode in ("packed", "recompute") else _null()
    cast = torch.autocast(x.device.type, dtype=torch.bfloat16) if path == "bf16" else _null()
    with ctx, cast:
        loss = F.cross_entropy(model(x).float(), y)  # .float(): a no-op off the bf16 path
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
    """One variant on one path in this (fresh) process: held memory of one step."""
    import gc

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, variant = args.worker
    path = args.paths[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(net, variant, args.activation, args.rule, args.thresholds).to(device).train()
    model = on_path(model, path)
    x, y = inputs(net, args.batch, device)
    mode = "exact" if variant == "relu" else variant
    for _ in range(2):  # warm-up: gradients allocated, allocator settled, compiled (forward and backward)
        model.zero_grad(set_to_none=False)
        step(model, x, y, mode, path=path)
    model.zero_grad(set_to_none=False)
    graphs = _compiled_graphs()
    gc.collect()
    out: Dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()

        def probe():
            torch.cuda.synchronize()
            out["held_mb"] = (torch.cuda.memory_allocated() - before) / 2**20

        step(model, x, y, mode, probe, path)
        torch.cuda.synchronize()
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = _rss()

        def probe():
            out["held_mb"] = (_rss() - before) / 2**20

        step(model, x, y, mode, probe, path)
    if _compiled_graphs() != graphs:
        raise RuntimeError("the measured step compiled (a recompile after the warm-up)")
    return out


def _compiled_graphs() -> int:
    """How many graphs dynamo has compiled in this process (0 off the compile path)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def first_line(exc: BaseException) -> str:
    """``Type: first line`` of an error, of its innermost cause if it wraps one (compiler errors do)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def held(net: str, variant: str, batch: int, args: argparse.Namespace, path: str = "eager") -> Dict[str, float]:
    """Run :func:`worker` in a fresh process; raises :class:`Crash` if the variant crashes on ``path``."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    env.update(TORCHINDUCTOR_CACHE_DIR=INDUCTOR_CACHE, TORCHINDUCTOR_COMPILE_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", net, variant, "--batch", str(batch), "--path", path]
    cmd += ["--activation", args.activation, "--rule", args.rule, "--thresholds", str(args.thresholds)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise Crash(f"timed out after {exc.timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if proc.returncode != 0 or "error" in result:
        stderr = proc.stderr.strip().splitlines()
        raise Crash(result.get("error") or (stderr[-1] if stderr else f"exit status {proc.returncode}"))
    return result


def held_cells(net: str, batch: int, path: str, args: argparse.Namespace, relu: Dict) -> List[str]:
    """Table cells of one network on one path: MB of ReLU, then of each memory mode with its ratio to ReLU."""
    if (net, path) not in relu:
        relu[net, path] = _or_crash(_held_mb, net, "relu", batch, args, path)
    cells = [_mb(relu[net, path])]
    for variant in VARIANTS[1:]:
        cells.append(_mb(_or_crash(_held_mb, net, variant, batch, args, path), relu[net, path]))
    return cells


def _held_mb(*args) -> float:
    return held(*args)["held_mb"]


def _or_crash(measure, *args):
    """``measure(*args)``, or the :class:`Crash` it raised (a table cell says so)."""
    try:
        return measure(*args)
    except Crash as crash:
        return crash


def _mb(value, reference=None) -> str:
    """A held-memory cell: MB, its ratio to ``reference`` (ReLU) when both were measured, or the crash."""
    if isinstance(value, Crash):
        return f"crash: {value}"
    if reference is None:
        return f"{value:.1f}"
    if isinstance(reference, Crash):
        return f"{value:.1f} (relu crashed)"
    return f"{value:.1f} ({value / reference:.2f}x)"


def step_times(net: str, args: argparse.Namespace, path: str = "eager") -> Dict[str, object]:
    """Mean CPU seconds per training step of each variant on ``path``: the median of ``--rounds`` alternating
    rounds (round 0 warms up, and compiles). A variant that crashes maps to its :class:`Crash`."""
    torch.set_num_threads(1)
    if path == "compile":
        torch._dynamo.reset()  # a fresh compile cache per network: earlier models would fill its size limit
    batch = args.time_batch or NETS[net][1]
    models, optims = {}, {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = build(net, variant, args.activation, args.rule, args.thresholds).train()
        optims[variant] = torch.optim.SGD(model.parameters(), lr=1e-3)
        models[variant] = on_path(model, path)
    x, y = inputs(net, batch)
    best: Dict[str, object] = {v: [] for v in VARIANTS}
    for round_ in range(args.rounds + 1):
        for variant in [v for v in VARIANTS if not isinstance(best[v], Crash)]:
            mode = "exact" if variant == "relu" else variant
            start = time.process_time()
            try:
                for _ in range(args.iters):
                    optims[variant].zero_grad()
                    step(models[variant], x, y, mode, path=path)
                    optims[variant].step()
            except Exception as exc:  # reported in the table, not hidden
                best[variant] = Crash(first_line(exc))
                continue
            if round_:  # round 0 warms up
                best[variant].append((time.process_time() - start) / args.iters)
    return {v: t if isinstance(t, Crash) else statistics.median(t) for v, t in best.items()}


def time_cells(t: Dict[str, object]) -> List[str]:
    """Table cells of :func:`step_times`: seconds per variant, then packed/exact, relu/packed, recompute/relu."""
    cells = [f"crash: {t[v]}" if isinstance(t[v], Crash) else f"{t[v]:.3f}" for v in VARIANTS]
    for a, b in (("packed", "exact"), ("relu", "packed"), ("recompute", "relu")):
        ok = not isinstance(t[a], Crash) and not isinstance(t[b], Crash)
        cells.append(f"{t[a] / t[b]:.2f}x" if ok else "n/a")
    return cells


def largest_batch(net: str, variant: str, budget_mb: float, args: argparse.Namespace, path: str = "eager") -> int:
    """The largest batch whose held memory is within ``budget_mb`` (bisection, fresh process per probe)."""
    lo, hi = 0, 8
    while held(net, variant, hi, args, path)["held_mb"] <= budget_mb:
        lo, hi = hi, hi * 2
        if hi > args.max_batch:
            return -lo  # at least lo: the search stops at --max-batch
    while hi - lo > max(1, lo // 32):  # within about 3%
        mid = (lo + hi) // 2
        if held(net, variant, mid, args, path)["held_mb"] <= budget_mb:
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
        "--paths",
        "--path",
        nargs="+",
        default=["eager"],
        choices=PATHS,
        help="how each step runs: eager (fp32), bf16 (autocast), compile (torch.compile); default eager",
    )
    parser.add_argument(
        "--rules",
        nargs="+",
        default=available_rules(),
        choices=available_rules(),
        help="the rules to measure (default: every rule; the default rule is reported first)",
    )
    parser.add_argument("--rule", default=DEFAULT_RULE, help=argparse.SUPPRESS)  # a worker's rule
    parser.add_argument("--thresholds", type=int, default=3, help="qrelu thresholds")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--iters", type=int, default=2)
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
        try:
            print(json.dumps(worker(args)))
        except Exception as exc:
            traceback.print_exc()
            print(json.dumps({"error": first_line(exc)}))
            sys.exit(1)
        return

    if args.accuracy:
        found = {mode: accuracy(mode) for mode in ("exact", "recompute")}
        print("| memory | test accuracy (convnet4, sign/sste, 1 epoch, seed 0) |\n|---|---|")
        for mode, acc in found.items():
            print(f"| {mode} | {acc!r} |")
        print("identical" if found["exact"] == found["recompute"] else "DIFFERENT")
        return

    torch.set_num_threads(1)
    os.environ.update(TORCHINDUCTOR_CACHE_DIR=INDUCTOR_CACHE, TORCHINDUCTOR_COMPILE_THREADS="1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rules = _ordered_rules(args.rules)
    paths = list(dict.fromkeys(args.paths))
    qrelu = f" thresholds={args.thresholds}" if args.activation == "qrelu" else ""
    print(f"# benchmarks/memory.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, device {device}")
    print(f"# torch {torch.__version__}; threshold unit {args.activation}{qrelu}, rules {', '.join(rules)}; 1 thread")
    print(f"# paths {', '.join(paths)}; ratios against ReLU on the same path")
    print(f"# the default: FTPropCallback({args.activation!r}) = rule {DEFAULT_RULE!r}, memory={DEFAULT_MEMORY!r}\n")

    print("## Held memory between forward and backward (MB; ratio to ReLU on the same path), the default rule first")
    print("| network | batch | input | rule | path | relu | exact | packed | recompute |")
    print("|---|---|---|---|---|---|---|---|---|")
    relu: Dict = {}  # (net, path) -> MB, or the Crash
    for rule in [] if args.skip_held else rules:
        args.rule = rule
        for net in args.nets:
            shape, batch, _ = NETS[net]
            size = "x".join(map(str, shape[1:] or shape))
            for path in paths:
                cells = held_cells(net, batch, path, args, relu)
                print(f"| {net} | {batch} | {size} | {_label(rule)} | {path} | " + " | ".join(cells) + " |", flush=True)

    if not args.skip_time:
        print("\n## Step time (CPU s per step, median round; ratios on the same path), the default rule first")
        print(
            "| network | batch | rule | path | relu | exact | packed | recompute | packed/exact "
            "| throughput of packed vs relu | recompute/relu |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for rule in rules:
            args.rule = rule
            for net in [n for n in args.time_nets if n in args.nets]:
                batch = args.time_batch or NETS[net][1]
                for path in paths:
                    cells = " | ".join(time_cells(step_times(net, args, path)))
                    print(f"| {net} | {batch} | {_label(rule)} | {path} | {cells} |", flush=True)

    if not args.skip_budget:
        args.rule = rules[0]
        print(f"\n## Largest batch whose held memory fits {args.budget_mb:.0f} MB ({_label(rules[0])})")
        print("| network | path | relu | packed | recompute | gain of recompute |")
        print("|---|---|---|---|---|---|")
        for net in args.budget_nets:
            for path in paths:
                found = [
                    _or_crash(largest_batch, net, v, args.budget_mb, args, path)
                    for v in ("relu", "packed", "recompute")
                ]
                cells = [f"crash: {b}" if isinstance(b, Crash) else f">= {-b}" if b < 0 else str(b) for b in found]
                if any(isinstance(b, Crash) for b in (found[0], found[2])):
                    gain = "n/a"
                else:
                    gain = f"{'>= ' if found[2] < 0 else ''}{abs(found[2]) / max(abs(found[0]), 1):.1f}x"
                print(f"| {net} | {path} | {' | '.join(cells)} | {gain} |", flush=True)


def _ordered_rules(rules: List[str]) -> List[str]:
    """The rules to measure, the default rule first."""
    return sorted(dict.fromkeys(rules), key=lambda r: r != DEFAULT_RULE)


def _label(rule: str) -> str:
    return f"**{rule} (default)**" if rule == DEFAULT_RULE else rule


if __name__ == "__main__":
    main()
