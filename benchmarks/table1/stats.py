"""The statistics of the records: mean ± std per cell and paired per-seed differences with 95% t-intervals.

Two cells are compared seed by seed: only the seeds both ran enter a paired difference (best or final test
accuracy of a - b), and its 95% interval is Student's t over those pairs.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from . import records as store

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard table values).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


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


def score(acc: List[float], final: bool) -> float:
    """A run's final test accuracy, or (``final=False``) its best."""
    return acc[-1] if final else max(acc)


def paired_interval(
    a: Dict[int, List[float]], b: Dict[int, List[float]], final: bool = False
) -> Optional[Tuple[int, float, float, float]]:
    """``(pairs, mean, low, high)`` of the per-seed differences a - b in best (or final) accuracy; None under 2 pairs."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    return (len(seeds), *t_interval([score(a[s], final) - score(b[s], final) for s in seeds]))


def format_interval(interval: Tuple[int, float, float, float]) -> str:
    """``mean [low, high]`` of a :func:`paired_interval`, signed, in points."""
    _, mean, low, high = interval
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def paired_columns(a: Dict[int, List[float]], b: Dict[int, List[float]]) -> Tuple[List[int], List[str]]:
    """Seeds run in both cells, and ``mean [95% CI]`` of the per-seed differences a - b for best and final."""
    seeds = sorted(set(a) & set(b))
    cols = []
    for final in (False, True):
        interval = paired_interval(a, b, final=final)
        if interval is not None:
            cols.append(format_interval(interval))
        elif seeds:  # one pair: its difference, and no interval
            cols.append(f"{score(a[seeds[0]], final) - score(b[seeds[0]], final):+.2f} (one pair)")
        else:
            cols.append("-")
    return seeds, cols


def epoch_curve(runs: List[List[float]]) -> Tuple[List[float], List[float]]:
    """Per-epoch mean and standard deviation (0 for one run) over runs, cut to the shortest run."""
    length = min(len(r) for r in runs)
    mean = [statistics.mean(r[i] for r in runs) for i in range(length)]
    std = [statistics.stdev([r[i] for r in runs]) if len(runs) > 1 else 0.0 for i in range(length)]
    return mean, std


def cells_of(records: List[Dict[str, object]]) -> Dict[Tuple, Dict[int, List[float]]]:
    """``{(net, data, epochs, activation, rule): {seed: test accuracy per epoch}}``."""
    cells: Dict[Tuple, Dict[int, List[float]]] = defaultdict(dict)
    for r in records:
        cells[(r["net"], r["data"], r["epochs"], r["activation"], r["rule"])][r["seed"]] = r["test_acc"]
    return cells


def plan_cell(records: List[Dict[str, object]]) -> Dict[Tuple[str, Optional[str]], Dict[int, List[float]]]:
    """The planned grid's runs (:data:`.records.PLAN`): ``{(activation, rule): {seed: test accuracy per epoch}}``."""
    return {key[3:]: runs for key, runs in cells_of(records).items() if key[:3] == store.PLAN}
