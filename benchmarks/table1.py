"""The paper's Table 1 comparison on full Fashion-MNIST, with error bars: FTP-SH against SSTE.

Each (net, method, seed) run trains one of the paper's convnets through the package's own Lightning path
(:class:`lightning_ftprop.ImageClassifier` and a ``Trainer``) with the paper's CIFAR-10 recipe, evaluates the
10k test set after every epoch, and appends one JSON line to ``--jsonl``::

    {"net": "convnet4", "activation": "sign", "rule": "soft_hinge", "seed": 0, "epochs": 10,
     "recipe": {...}, "data": "fashion_mnist", "test_acc": [..one value per epoch..], ...}

A rerun skips the runs already recorded (same net, method, seed, epochs, recipe and data), so the grid can
span several sessions; ``--shard I/N`` splits the remaining grid between N background processes.

Recipe (digest section 3.2/3.3): Adam with default betas, coupled L2 weight decay 5e-4 on every parameter,
batch 64, lr 2.5e-4 (convnet4) or 1e-3 (convnet8), lr x0.1 at the start of the epochs the paper used
(200 and 250 of 300), scaled to ``--epochs`` (10 epochs: decays at the start of epochs 8 and 9).

    python benchmarks/table1.py --threads 1 --epochs 10 --seeds 3 --nets convnet4    # the grid (hours)
    python benchmarks/table1.py --report                                            # tables + plot

``--report`` prints, per cell, mean +- std of the best and the final test accuracy, and for each net and
activation the paired per-seed difference FTP-SH - SSTE with its mean and a 95% t-interval; it also draws
test accuracy against epoch (mean and +-1 std band) for FTP-SH against SSTE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
DEFAULT_JSONL = HERE / "table1.jsonl"
DEFAULT_PLOT = HERE / "table1.png"

#: (activation, rule); the rule is None for the float baselines.
METHODS: Tuple[Tuple[str, Optional[str]], ...] = (
    ("relu", None),
    ("saturated_relu", None),
    ("sign", "sste"),
    ("sign", "soft_hinge"),
    ("qrelu", "sste"),
    ("qrelu", "soft_hinge"),
)
#: The paper's CIFAR-10 learning rates (README of the reference code; digest 3.2 and 3.3).
PAPER_LR = {"convnet4": 2.5e-4, "convnet8": 1e-3}
PAPER_EPOCHS, PAPER_DECAYS = 300, (200, 250)

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard table values).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def method_name(activation: str, rule: Optional[str]) -> str:
    return activation if rule is None else f"{activation}/{rule}"


def parse_method(text: str) -> Tuple[str, Optional[str]]:
    known = {method_name(*m): m for m in METHODS}
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; valid methods are: {', '.join(known)}")
    return known[text]


def scaled_milestones(epochs: int) -> List[int]:
    """The paper's decays (start of epochs 200 and 250 of 300) scaled to ``epochs``: 1-based, >= 2, distinct.

    The paper trains ``d - 1`` epochs before the decay at epoch ``d``; the scaled decay comes after
    ``round((d - 1) * epochs / 300)`` epochs. For 10 epochs that is the start of epochs 8 and 9.
    """
    milestones: List[int] = []
    for decay in PAPER_DECAYS:
        epoch = max(2, 1 + round((decay - 1) * epochs / PAPER_EPOCHS))
        if milestones and epoch <= milestones[-1]:
            epoch = milestones[-1] + 1
        if epoch <= epochs:
            milestones.append(epoch)
    return milestones


def recipe(net: str, epochs: int) -> Dict[str, object]:
    return {
        "optimizer": "adam",
        "lr": PAPER_LR[net],
        "weight_decay": 5e-4,
        "batch_size": 64,
        "milestones": scaled_milestones(epochs),
        "gamma": 0.1,
        "qrelu_steps": 3,
    }


def run_key(record: Dict[str, object]) -> Tuple:
    return (
        record["net"],
        record["activation"],
        record["rule"],
        record["seed"],
        record["epochs"],
        json.dumps(record["recipe"], sort_keys=True),
        record["data"],
    )


def read_records(path: Path) -> List[Dict[str, object]]:
    if not path.exists():
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_record(path: Path, record: Dict[str, object]) -> None:
    """One whole line per run, written with a single ``write`` on an O_APPEND file (safe between shards)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# --- one run ------------------------------------------------------------------------------------------


def train_run(net: str, activation: str, rule: Optional[str], seed: int, epochs: int, args) -> Dict[str, object]:
    """Train one cell through ImageClassifier + Trainer and return its JSONL record."""
    import lightning.pytorch as pl
    import torch

    from lightning_ftprop import ImageClassifier
    from lightning_ftprop.data import EmbeddedFashionMNISTDataModule, FashionMNISTDataModule

    cfg = recipe(net, epochs)
    pl.seed_everything(seed, workers=True, verbose=False)
    if args.embedded:
        data = EmbeddedFashionMNISTDataModule(batch_size=cfg["batch_size"])
    else:
        data = FashionMNISTDataModule(data_dir=str(args.data_dir), batch_size=cfg["batch_size"])
    kwargs = dict(thresholds=cfg["qrelu_steps"]) if activation == "qrelu" else {}
    model = ImageClassifier(
        arch=net,
        activation=activation,
        rule=rule or "soft_hinge",
        num_classes=10,
        in_channels=1,
        optimizer=cfg["optimizer"],
        lr=cfg["lr"],
        weight_decay=cfg["weight_decay"],
        milestones=cfg["milestones"],
        gamma=cfg["gamma"],
        **kwargs,
    )

    accuracies: List[float] = []

    class TestAccuracyPerEpoch(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                accuracies.append(round(100.0 * float(trainer.callback_metrics["val/acc"]), 4))

    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=[TestAccuracyPerEpoch()],
        deterministic=False,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)  # val split 0: the "validation" set is the 10k test set (--no-val)
    return {
        "net": net,
        "activation": activation,
        "rule": rule,
        "seed": seed,
        "epochs": epochs,
        "recipe": cfg,
        "data": "fashion_mnist_embedded" if args.embedded else "fashion_mnist",
        "test_acc": accuracies,
        "train_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def grid(nets: Iterable[str], methods, seeds: int) -> List[Tuple[str, str, Optional[str], int]]:
    """The runs in the order they are trained: per net, the threshold units seed by seed, then the baselines.

    Seed-major order means every finished seed completes a paired FTP-SH/SSTE comparison.
    """
    runs = []
    for net in nets:
        for baselines in (False, True):
            for seed in range(seeds):
                runs += [(net, act, rule, seed) for act, rule in methods if (rule is None) == baselines]
    return runs


def run_grid(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.embedded and not Path(args.data_dir).is_dir():
        raise SystemExit(
            f"no Fashion-MNIST IDX files in {args.data_dir}; install Debian's dataset-fashion-mnist or pass --data-dir"
        )
    shard, shards = args.shard
    done = {run_key(r) for r in read_records(args.jsonl)}
    remaining = []
    for net, act, rule, seed in grid(args.nets, args.methods, args.seeds):
        probe = {"net": net, "activation": act, "rule": rule, "seed": seed, "epochs": args.epochs}
        probe.update(
            recipe=recipe(net, args.epochs), data="fashion_mnist_embedded" if args.embedded else "fashion_mnist"
        )
        if run_key(probe) in done:
            print(f"skip {net} {method_name(act, rule)} seed {seed}: already in {args.jsonl}", flush=True)
        else:
            remaining.append((net, act, rule, seed))
    # Deal the remaining runs (not the whole grid) round-robin, so the shards stay balanced after a resume.
    todo = remaining[shard::shards]
    for net, act, rule, seed in todo:
        record = train_run(net, act, rule, seed, args.epochs, args)
        append_record(args.jsonl, record)
        print(
            f"{net} {method_name(act, rule)} seed {seed}: best {max(record['test_acc']):.2f} "
            f"final {record['test_acc'][-1]:.2f} ({record['train_seconds']:.0f} s)",
            flush=True,
        )
    return len(todo)


# --- the report ---------------------------------------------------------------------------------------


def mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (one seed)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def t_interval(diffs: List[float]) -> Tuple[float, float, float]:
    """Mean and 95% Student-t interval of paired differences (nan bounds for fewer than 2 pairs)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    df = len(diffs) - 1
    half = (T975[df - 1] if df <= len(T975) else 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def report(records: List[Dict[str, object]], plot: Optional[Path]) -> str:
    cells: Dict[Tuple, Dict[int, List[float]]] = defaultdict(dict)
    for r in records:
        cells[(r["net"], r["data"], r["epochs"], r["activation"], r["rule"])][r["seed"]] = r["test_acc"]
    lines = [
        "| net | data | epochs | method | seeds | best test acc (%) | final test acc (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (net, data, epochs, act, rule), runs in sorted(cells.items(), key=lambda kv: _order(kv[0])):
        best = [max(acc) for acc in runs.values()]
        final = [acc[-1] for acc in runs.values()]
        lines.append(
            f"| {net} | {data} | {epochs} | {method_name(act, rule)} | {len(runs)} | {mean_std(best)} | {mean_std(final)} |"
        )
    lines += ["", "Paired per-seed difference FTP-SH - SSTE (percentage points, 95% t-interval):", ""]
    lines += ["| net | data | epochs | activation | pairs | best: mean [95% CI] | final: mean [95% CI] |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for (net, data, epochs, act, rule), sh in sorted(cells.items(), key=lambda kv: _order(kv[0])):
        if rule != "soft_hinge" or (net, data, epochs, act, "sste") not in cells:
            continue
        sste = cells[(net, data, epochs, act, "sste")]
        seeds = sorted(set(sh) & set(sste))
        if not seeds:
            continue
        cols = []
        for pick in (max, lambda acc: acc[-1]):
            mean, low, high = t_interval([pick(sh[s]) - pick(sste[s]) for s in seeds])
            cols.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" if len(seeds) > 1 else f"{mean:+.2f} (one pair)")
        lines.append(f"| {net} | {data} | {epochs} | {act} | {len(seeds)} | {cols[0]} | {cols[1]} |")
    if plot is not None:
        _plot(cells, plot)
        lines += ["", f"plot: {plot}"]
    return "\n".join(lines)


def _order(key: Tuple) -> Tuple:
    net, data, epochs, act, rule = key
    index = [method_name(*m) for m in METHODS]
    name = method_name(act, rule)
    return (net, data, epochs, index.index(name) if name in index else len(index), name)


def _plot(cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(k[0], k[1], k[2], k[3]) for k in cells if k[4] == "soft_hinge"})
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (net, data, epochs, act) in zip(axes[0], panels):
        for rule, colour, label in (("sste", "tab:orange", "SSTE"), ("soft_hinge", "tab:blue", "FTP-SH")):
            runs = list(cells.get((net, data, epochs, act, rule), {}).values())
            if not runs:
                continue
            length = min(len(r) for r in runs)
            xs = list(range(1, length + 1))
            mean = [statistics.mean(r[i] for r in runs) for i in range(length)]
            std = [statistics.stdev([r[i] for r in runs]) if len(runs) > 1 else 0.0 for i in range(length)]
            ax.plot(xs, mean, color=colour, label=f"{label} (n={len(runs)})")
            ax.fill_between(
                xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=colour, alpha=0.2
            )
        ax.set_title(f"{net} {act} ({data})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------------------


def parse_shard(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=["convnet4", "convnet8"], choices=sorted(PAPER_LR))
    parser.add_argument("--methods", nargs="+", type=parse_method, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: two processes at most)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="run every N-th remaining run, I/N")
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument(
        "--embedded", action="store_true", help="the packaged 12k/2k subset instead (tests, smoke runs)"
    )
    parser.add_argument(
        "--limit-batches", type=float, default=1.0, help="Trainer limit_{train,val}_batches (smoke runs)"
    )
    parser.add_argument("--jsonl", type=Path, default=DEFAULT_JSONL)
    parser.add_argument("--report", action="store_true", help="print the tables from --jsonl and draw --plot")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)
    if args.report:
        print(report(read_records(args.jsonl), args.plot))
        return 0
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    run_grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
