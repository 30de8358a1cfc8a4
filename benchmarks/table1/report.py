"""The report of the records: markdown tables, the plot, computed findings, and the documents written from them.

:func:`report` (``--report``) gives, per cell, mean ± std of the best and the final test accuracy; the same in
the paper's Table 1 layout; for each net and activation the paired per-seed difference FTP-SH - SSTE with its
mean and a 95% t-interval; and each threshold method's paired difference to the two float baselines. It also
draws test accuracy against epoch (mean and ±1 std band) for FTP-SH against SSTE over their matched seeds only,
with the float baselines over the same seeds.

:func:`write_documents` (``--write``) puts the tables, the grid's progress and the findings (computed
sentences, e.g. whether each 95% interval excludes zero) between the ``table1.py --write`` marks of
``benchmarks/RESULTS.md`` and ``README.md``; a test checks that the committed text equals what the committed
records give.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lightning_ftprop.paper import RECIPES

from . import records as store
from .records import METHODS, method_name, planned_runs
from .stats import cells_of, epoch_curve, format_interval, mean_std, paired_columns, paired_interval, plan_cell

DEFAULT_PLOT = store.BENCHMARKS_DIR / "table1.png"


# --- the tables ---------------------------------------------------------------------------------------


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
        seeds, cols = paired_columns(sh, sste)
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
            seeds, cols = paired_columns(runs, base_runs)
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


# --- the plot -----------------------------------------------------------------------------------------


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
            "SSTE": epoch_curve([sste[s] for s in seeds]),
            "FTP-SH": epoch_curve([sh[s] for s in seeds]),
        }
        for b_act, b_rule in (m for m in METHODS if m[1] is None):
            base = cells.get((net, data, epochs, b_act, b_rule), {})
            matched = [base[s] for s in seeds if s in base]
            if matched:
                curves[f"{b_act} (n={len(matched)})"] = epoch_curve(matched)
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

RESULTS_MD = store.BENCHMARKS_DIR / "RESULTS.md"
README_MD = store.BENCHMARKS_DIR.parent / "README.md"
#: Each document holds the written text between these two lines; ``--write`` replaces what is between them.
BEGIN, END = "<!-- table1.py --write: begin -->", "<!-- table1.py --write: end -->"


def _verdict(interval: Tuple[int, float, float, float], first: str, second: str) -> str:
    _, _, low, high = interval
    if low > 0:
        return f"{first} ahead (the 95% interval excludes zero)"
    if high < 0:
        return f"{second} ahead (the 95% interval excludes zero)"
    return "not resolved (the 95% interval contains zero)"


def _label(activation: str) -> str:
    thresholds = RECIPES[store.PLAN[0]].qrelu_thresholds
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
            f"{_label(act)}, {best[0]} paired seeds: FTP-SH - SSTE is {format_interval(best)} points in best accuracy "
            f"and {format_interval(final)} in final accuracy: {verdict}. FTP-SH has the higher best accuracy in "
            f"{wins} of {best[0]} seeds."
        )
    for base_act, base_rule in (m for m in METHODS if m[1] is None):
        base = cell.get((base_act, base_rule), {})
        parts = []
        for act, rule in (m for m in METHODS if m[1] is not None):
            interval = paired_interval(cell.get((act, rule), {}), base)
            if interval is not None:
                parts.append(f"{method_name(act, rule)} {format_interval(interval)} (n={interval[0]})")
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
    have = {
        (r["activation"], r["rule"], r["seed"]) for r in records if (r["net"], r["data"], r["epochs"]) == store.PLAN
    }
    plan = planned_runs()
    missing = [f"{method_name(a, r)} seed {s}" for a, r, s in plan if (a, r, s) not in have]
    return len(plan) - len(missing), len(plan), missing


def results_section(records: List[Dict[str, object]]) -> str:
    """What ``--write`` puts in RESULTS.md, section 6: progress, the report's tables, the plot and the findings."""
    done, planned, missing = _progress(records)
    mine = [r for r in records if (r["net"], r["data"], r["epochs"]) == store.PLAN]
    finished = sorted(str(r.get("finished", "")) for r in mine if r.get("finished"))
    cpu = [float(r["cpu_seconds"]) for r in mine if r.get("cpu_seconds")]
    status = f"**{done} of the {planned} planned {store.PLAN[0]} runs are recorded**"
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
        return "The paper's FTP-SH against SSTE comparison has no paired seeds yet (`python -m benchmarks.table1`)."
    text = (
        f"**How FTP-SH compares with SSTE.** On full Fashion-MNIST with the paper's recipe for {store.PLAN[2]} epochs "
        f"({store.PLAN[0]}), FTP-SH minus SSTE in best test accuracy is {' and '.join(clauses)}."
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
