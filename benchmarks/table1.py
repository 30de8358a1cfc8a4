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
    python benchmarks/table1.py --report --write    # also rewrite RESULTS.md section 6 and the README's result

convnet8 (about 15 CPU-hours for 18 runs) is meant for a GPU: ``--nets convnet8 --accelerator gpu``, with
``--shard I/N`` to run N processes side by side on the one device.

``--report`` prints, per cell, mean +- std of the best and the final test accuracy; the same in the paper's
Table 1 layout; for each net and activation the paired per-seed difference FTP-SH - SSTE with its mean and a
95% t-interval; and each threshold method's paired difference to the two float baselines. It also draws test
accuracy against epoch (mean and +-1 std band) for FTP-SH against SSTE over their matched seeds only, with the
float baselines over the same seeds. ``--write`` puts the tables, the grid's progress and the findings (computed
sentences, e.g. whether each 95% interval excludes zero) between the ``table1.py --write`` marks of
``benchmarks/RESULTS.md`` and ``README.md``; a test checks that the committed text equals what the committed
records give.

Methods and recipes come from :mod:`lightning_ftprop.paper`.
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

from lightning_ftprop.paper import METHODS as PAPER_METHODS
from lightning_ftprop.paper import RECIPES

HERE = Path(__file__).resolve().parent
DEFAULT_JSONL = HERE / "table1.jsonl"
DEFAULT_PLOT = HERE / "table1.png"

#: (activation, rule) of the paper's six methods (lightning_ftprop.paper); the rule is None for the baselines.
METHODS: Tuple[Tuple[str, Optional[str]], ...] = tuple((m.activation, m.rule) for m in PAPER_METHODS)
#: The nets this grid trains (their recipes: lightning_ftprop.paper.RECIPES).
NETS = ("convnet4", "convnet8")

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


def scaled_milestones(net: str, epochs: int) -> List[int]:
    """The paper's decays for ``net`` (convnets: start of epochs 200 and 250 of 300) scaled to ``epochs``.

    The result is 1-based, >= 2 and distinct. The paper trains ``d - 1`` epochs before the decay at epoch
    ``d``; the scaled decay comes after ``round((d - 1) * epochs / paper_epochs)`` epochs. For 10 epochs of a
    convnet that is the start of epochs 8 and 9.
    """
    paper = RECIPES[net]
    milestones: List[int] = []
    for decay in paper.milestones:
        epoch = max(2, 1 + round((decay - 1) * epochs / paper.epochs))
        if milestones and epoch <= milestones[-1]:
            epoch = milestones[-1] + 1
        if epoch <= epochs:
            milestones.append(epoch)
    return milestones


def recipe(net: str, epochs: int, activation: str) -> Dict[str, object]:
    """The paper's recipe for ``net`` (lightning_ftprop.paper.RECIPES) with its decays scaled to ``epochs``."""
    paper = RECIPES[net]
    return {
        "optimizer": paper.optimizer,
        "lr": paper.lr,
        "weight_decay": paper.weight_decay_for(activation),
        "batch_size": paper.batch_size,
        "milestones": scaled_milestones(net, epochs),
        "gamma": paper.gamma,
        "qrelu_steps": paper.qrelu_thresholds,  # the record key predates the name; kept so old records match
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

    cfg = recipe(net, epochs, activation)
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
    started = time.perf_counter()

    class TestAccuracyPerEpoch(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                accuracies.append(round(100.0 * float(trainer.callback_metrics["val/acc"]), 4))
                print(
                    f"{net} {method_name(activation, rule)} seed {seed}: epoch {len(accuracies)}/{epochs} "
                    f"test acc {accuracies[-1]:.2f} ({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )

    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=args.accelerator,
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
        "accelerator": trainer.accelerator.__class__.__name__,
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
            recipe=recipe(net, args.epochs, act), data="fashion_mnist_embedded" if args.embedded else "fashion_mnist"
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


def _score(acc: List[float], final: bool) -> float:
    """A run's final test accuracy, or (``final=False``) its best."""
    return acc[-1] if final else max(acc)


def _paired(a: Dict[int, List[float]], b: Dict[int, List[float]]) -> Tuple[List[int], List[str]]:
    """Seeds run in both cells, and ``mean [95% CI]`` of the per-seed differences a - b for best and final."""
    seeds = sorted(set(a) & set(b))
    cols = []
    for final in (False, True):
        interval = paired_interval(a, b, final=final)
        if interval is not None:
            cols.append(_ci(interval))
        elif seeds:  # one pair: its difference, and no interval
            cols.append(f"{_score(a[seeds[0]], final) - _score(b[seeds[0]], final):+.2f} (one pair)")
        else:
            cols.append("-")
    return seeds, cols


def cells_of(records: List[Dict[str, object]]) -> Dict[Tuple, Dict[int, List[float]]]:
    """``{(net, data, epochs, activation, rule): {seed: test accuracy per epoch}}``."""
    cells: Dict[Tuple, Dict[int, List[float]]] = defaultdict(dict)
    for r in records:
        cells[(r["net"], r["data"], r["epochs"], r["activation"], r["rule"])][r["seed"]] = r["test_acc"]
    return cells


def plan_cell(records: List[Dict[str, object]]) -> Dict[Tuple[str, Optional[str]], Dict[int, List[float]]]:
    """The planned grid's runs (:data:`PLAN`): ``{(activation, rule): {seed: test accuracy per epoch}}``."""
    return {key[3:]: runs for key, runs in cells_of(records).items() if key[:3] == PLAN}


def report(records: List[Dict[str, object]], plot: Optional[Path]) -> str:
    """Markdown tables of the records: per cell, Table 1's layout, FTP-SH - SSTE, and the gap to the baselines."""
    cells = cells_of(records)
    ordered = sorted(cells.items(), key=lambda kv: _order(kv[0]))
    lines = [
        "| net | data | epochs | method | seeds | best test acc (%) | final test acc (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (net, data, epochs, act, rule), runs in ordered:
        best = [max(acc) for acc in runs.values()]
        final = [acc[-1] for acc in runs.values()]
        lines.append(
            f"| {net} | {data} | {epochs} | {method_name(act, rule)} | {len(runs)} | {mean_std(best)} | {mean_std(final)} |"
        )

    # Table 1's own layout: one row per net, the threshold methods then the float baselines, best accuracy.
    columns = [m for m in METHODS if m[1] is not None] + [m for m in METHODS if m[1] is None]
    groups = sorted({k[:3] for k in cells})
    lines += ["", "As the paper's Table 1 (best test accuracy %, mean ± std over seeds, n = seeds):", ""]
    lines += ["| net | data | epochs | " + " | ".join(method_name(*m) for m in columns) + " |"]
    lines += ["|---|---|---|" + "---|" * len(columns)]
    for group in groups:
        row = []
        for act, rule in columns:
            runs = cells.get((*group, act, rule), {})
            row.append(f"{mean_std([max(a) for a in runs.values()])} (n={len(runs)})" if runs else "-")
        lines.append(f"| {group[0]} | {group[1]} | {group[2]} | " + " | ".join(row) + " |")

    lines += ["", "Paired per-seed difference FTP-SH - SSTE (percentage points, 95% t-interval):", ""]
    lines += [
        "| net | data | epochs | activation | pairs | best: mean [95% CI] | final: mean [95% CI] | best, per seed |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for (net, data, epochs, act, rule), sh in ordered:
        sste = cells.get((net, data, epochs, act, "sste"))
        if rule != "soft_hinge" or not sste:
            continue
        seeds, cols = _paired(sh, sste)
        if seeds:
            per_seed = ", ".join(f"{s}: {max(sh[s]) - max(sste[s]):+.2f}" for s in seeds)
            lines.append(f"| {net} | {data} | {epochs} | {act} | {len(seeds)} | {cols[0]} | {cols[1]} | {per_seed} |")

    baselines = [m for m in METHODS if m[1] is None]
    lines += ["", "Against the float baselines: paired per-seed difference method - baseline (points, 95% t-interval):"]
    lines += ["", "| net | data | epochs | method | baseline | pairs | best: mean [95% CI] | final: mean [95% CI] |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for (net, data, epochs, act, rule), runs in ordered:
        if rule is None:
            continue
        for base in baselines:
            base_runs = cells.get((net, data, epochs, *base))
            if not base_runs:
                continue
            seeds, cols = _paired(runs, base_runs)
            if seeds:
                lines.append(
                    f"| {net} | {data} | {epochs} | {method_name(act, rule)} | {method_name(*base)} | {len(seeds)} "
                    f"| {cols[0]} | {cols[1]} |"
                )
    if plot is not None:
        _plot(cells, plot)
        lines += ["", f"plot: {plot}"]
    return "\n".join(lines)


def _order(key: Tuple) -> Tuple:
    net, data, epochs, act, rule = key
    index = [method_name(*m) for m in METHODS]
    name = method_name(act, rule)
    return (net, data, epochs, index.index(name) if name in index else len(index), name)


def _curve(runs: List[List[float]]) -> Tuple[List[float], List[float]]:
    """Per-epoch mean and standard deviation (0 for one run) over runs, cut to the shortest run."""
    length = min(len(r) for r in runs)
    mean = [statistics.mean(r[i] for r in runs) for i in range(length)]
    std = [statistics.stdev([r[i] for r in runs]) if len(runs) > 1 else 0.0 for i in range(length)]
    return mean, std


def plot_panels(cells) -> List[Tuple[str, List[int], Dict[str, Tuple[List[float], List[float]]]]]:
    """What the plot shows: per net and activation, ``(title, matched seeds, {label: (mean, std) per epoch})``.

    SSTE and FTP-SH are averaged over the seeds both ran (never over unmatched runs); the float baselines over
    those same seeds where they ran.
    """
    panels = []
    for net, data, epochs, act, rule in sorted(cells):
        if rule != "soft_hinge":
            continue
        sh, sste = cells[(net, data, epochs, act, rule)], cells.get((net, data, epochs, act, "sste"), {})
        seeds = sorted(set(sh) & set(sste))
        if not seeds:
            continue
        curves = {
            "SSTE": _curve([sste[s] for s in seeds]),
            "FTP-SH": _curve([sh[s] for s in seeds]),
        }
        for b_act, b_rule in (m for m in METHODS if m[1] is None):
            base = cells.get((net, data, epochs, b_act, b_rule), {})
            matched = [base[s] for s in seeds if s in base]
            if matched:
                curves[f"{b_act} (n={len(matched)})"] = _curve(matched)
        panels.append((f"{net} {act} ({data}), seeds {','.join(map(str, seeds))}", seeds, curves))
    return panels


def _plot(cells, path: Path) -> None:
    """Draw :func:`plot_panels`: test accuracy per epoch, mean and a +-1 std band (dashed: float baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_panels(cells)
    if not panels:
        return
    colours = {"SSTE": "tab:orange", "FTP-SH": "tab:blue"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, _, curves) in zip(axes[0], panels):
        for index, (label, (mean, std)) in enumerate(curves.items()):
            xs = list(range(1, len(mean) + 1))
            if label in colours:
                ax.plot(xs, mean, color=colours[label], label=label)
                low, high = [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]
                ax.fill_between(xs, low, high, color=colours[label], alpha=0.2)
            else:
                ax.plot(xs, mean, color=("0.25", "0.6")[index % 2], linestyle="--", label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the documents written from the records (``--report --write``) -----------------------------------------

RESULTS_MD = HERE / "RESULTS.md"
README_MD = HERE.parent / "README.md"
#: Each document holds the written text between these two lines; ``--write`` replaces what is between them.
BEGIN, END = "<!-- table1.py --write: begin -->", "<!-- table1.py --write: end -->"
#: The cell the documents speak of: the planned grid's net, data and length.
PLAN = ("convnet4", "fashion_mnist", 10)


def planned_runs() -> List[Tuple[str, Optional[str], int]]:
    """The planned grid: seeds 0-2 of the six methods, then seeds 3-4 of the four threshold methods."""
    runs = [(act, rule, seed) for seed in range(3) for act, rule in METHODS]
    return runs + [(act, rule, seed) for seed in (3, 4) for act, rule in METHODS if rule is not None]


def paired_interval(
    a: Dict[int, List[float]], b: Dict[int, List[float]], final: bool = False
) -> Optional[Tuple[int, float, float, float]]:
    """``(pairs, mean, low, high)`` of the per-seed differences a - b in best (or final) accuracy; None under 2 pairs."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    return (len(seeds), *t_interval([_score(a[s], final) - _score(b[s], final) for s in seeds]))


def _ci(interval: Tuple[int, float, float, float]) -> str:
    _, mean, low, high = interval
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def _verdict(interval: Tuple[int, float, float, float], first: str, second: str) -> str:
    _, _, low, high = interval
    if low > 0:
        return f"{first} ahead (the 95% interval excludes zero)"
    if high < 0:
        return f"{second} ahead (the 95% interval excludes zero)"
    return "not resolved (the 95% interval contains zero)"


def _label(activation: str) -> str:
    thresholds = RECIPES[PLAN[0]].qrelu_thresholds
    return f"{int(math.log2(thresholds + 1))}-bit qReLU" if activation == "qrelu" else activation


def findings(records: List[Dict[str, object]]) -> List[str]:
    """The planned cell's paired comparisons as sentences: FTP-SH - SSTE, then each method against each baseline."""
    cell = plan_cell(records)
    lines = []
    for act in dict.fromkeys(a for a, r in METHODS if r is not None):
        sh, sste = cell.get((act, "soft_hinge"), {}), cell.get((act, "sste"), {})
        best, final = paired_interval(sh, sste), paired_interval(sh, sste, final=True)
        if best is None:
            lines.append(f"{_label(act)}: fewer than two paired seeds of FTP-SH and SSTE, so no interval yet.")
            continue
        verdicts = {_verdict(best, "FTP-SH", "SSTE"), _verdict(final, "FTP-SH", "SSTE")}
        verdict = (
            verdicts.pop()
            if len(verdicts) == 1
            else (f"{_verdict(best, 'FTP-SH', 'SSTE')} in best accuracy, {_verdict(final, 'FTP-SH', 'SSTE')} in final")
        )
        wins = sum(max(sh[s]) > max(sste[s]) for s in set(sh) & set(sste))
        lines.append(
            f"{_label(act)}, {best[0]} paired seeds: FTP-SH - SSTE is {_ci(best)} points in best accuracy and "
            f"{_ci(final)} in final accuracy: {verdict}. FTP-SH has the higher best accuracy in {wins} of "
            f"{best[0]} seeds."
        )
    for base_act, base_rule in (m for m in METHODS if m[1] is None):
        base = cell.get((base_act, base_rule), {})
        parts = []
        for act, rule in (m for m in METHODS if m[1] is not None):
            interval = paired_interval(cell.get((act, rule), {}), base)
            if interval is not None:
                parts.append(f"{method_name(act, rule)} {_ci(interval)} (n={interval[0]})")
        if parts:
            lines.append(
                f"Against the float {method_name(base_act, base_rule)} baseline (method - baseline, best accuracy, "
                f"points, 95% interval): " + "; ".join(parts) + "."
            )
        else:
            lines.append(f"The float {method_name(base_act, base_rule)} baseline has fewer than two paired seeds.")
    return lines


def _progress(records: List[Dict[str, object]]) -> Tuple[int, int, List[str]]:
    """``(recorded, planned, missing run names)`` of the planned grid."""
    have = {(r["activation"], r["rule"], r["seed"]) for r in records if (r["net"], r["data"], r["epochs"]) == PLAN}
    plan = planned_runs()
    missing = [f"{method_name(a, r)} seed {s}" for a, r, s in plan if (a, r, s) not in have]
    return len(plan) - len(missing), len(plan), missing


def results_section(records: List[Dict[str, object]]) -> str:
    """What ``--write`` puts in RESULTS.md, section 6: progress, the report's tables, the plot and the findings."""
    done, planned, missing = _progress(records)
    mine = [r for r in records if (r["net"], r["data"], r["epochs"]) == PLAN]
    finished = sorted(str(r.get("finished", "")) for r in mine if r.get("finished"))
    cpu = [float(r["cpu_seconds"]) for r in mine if r.get("cpu_seconds")]
    status = f"**{done} of the {planned} planned {PLAN[0]} runs are recorded**"
    status += " (the grid is complete)." if not missing else f"; missing: {', '.join(missing)}."
    if finished and cpu:
        status += (
            f" The runs finished between {finished[0]} and {finished[-1]}; one run took a median of "
            f"{statistics.median(cpu):,.0f} CPU seconds (range {min(cpu):,.0f}-{max(cpu):,.0f})."
        )
    parts = [
        status,
        "",
        report(records, None),
        "",
        "![test accuracy per epoch, FTP-SH against SSTE over their matched seeds](table1.png)",
        "",
        "What the records show (these sentences are computed from them):",
        "",
    ]
    parts += [f"* {line}" for line in findings(records)]
    return "\n".join(parts)


def readme_sentence(records: List[Dict[str, object]]) -> str:
    """What ``--write`` puts in the README after its opening paragraph: the paired FTP-SH - SSTE result."""
    cell = plan_cell(records)
    clauses = []
    for act in dict.fromkeys(a for a, r in METHODS if r is not None):
        best = paired_interval(cell.get((act, "soft_hinge"), {}), cell.get((act, "sste"), {}))
        if best is None:
            continue
        n, mean, low, high = best
        short = "FTP-SH ahead" if low > 0 else "SSTE ahead" if high < 0 else "no winner resolved"
        clauses.append(
            f"{mean:+.2f} points for {_label(act)} (95% interval [{low:+.2f}, {high:+.2f}] over {n} paired seeds: "
            f"{short})"
        )
    if not clauses:
        return "The paper's FTP-SH against SSTE comparison has no paired seeds yet (`benchmarks/table1.py`)."
    text = (
        f"**How FTP-SH compares with SSTE.** On full Fashion-MNIST with the paper's recipe for {PLAN[2]} epochs "
        f"({PLAN[0]}), FTP-SH minus SSTE in best test accuracy is {' and '.join(clauses)}."
    )
    relu, sign = cell.get(("relu", None), {}), cell.get(("sign", "soft_hinge"), {})
    if len(relu) >= 2 and len(sign) >= 2:
        text += (
            f" The float ReLU network reaches {mean_std([max(a) for a in relu.values()])}% and sign with FTP-SH "
            f"{mean_std([max(a) for a in sign.values()])}% (mean ± std over seeds)."
        )
    done, planned, missing = _progress(records)
    if missing:
        text += f" {done} of the {planned} planned runs are recorded."
    return text + " The tables: [benchmarks/RESULTS.md](benchmarks/RESULTS.md), section 6."


def replace_between_marks(text: str, body: str, where: str) -> str:
    """``text`` with what lies between :data:`BEGIN` and :data:`END` replaced by ``body``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{where} must hold the line {BEGIN!r} once, then {END!r} once; it does not")
    head, rest = text.split(BEGIN)
    return head + BEGIN + "\n" + body.strip("\n") + "\n" + END + rest.split(END, 1)[1]


def marked(text: str) -> str:
    """What lies between :data:`BEGIN` and :data:`END` in ``text`` (stripped of the newlines at its ends)."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write_documents(records: List[Dict[str, object]], results: Path = RESULTS_MD, readme: Path = README_MD) -> None:
    """Rewrite the marked parts of RESULTS.md (section 6) and the README (its opening result) from ``records``."""
    for path, body in ((results, results_section(records)), (readme, readme_sentence(records))):
        path.write_text(replace_between_marks(path.read_text(), body, str(path)))


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
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--methods", nargs="+", type=parse_method, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: two processes at most)")
    parser.add_argument(
        "--accelerator", default="cpu", choices=("cpu", "gpu"), help="Trainer accelerator, one device per process"
    )
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
    parser.add_argument(
        "--write", action="store_true", help="with --report: rewrite RESULTS.md section 6 and the README's result"
    )
    args = parser.parse_args(argv)
    if args.write and not args.report:
        parser.error("--write rewrites the documents from the report; pass it with --report")
    if args.report:
        records = read_records(args.jsonl)
        print(report(records, args.plot))
        if args.write:
            write_documents(records)
            print(f"wrote {RESULTS_MD} (section 6) and {README_MD} (opening result)")
        return 0
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    run_grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
