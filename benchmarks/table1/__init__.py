"""The paper's Table 1 comparison on full Fashion-MNIST, with error bars: FTP-SH against SSTE.

Each (net, method, seed) run trains one of the paper's convnets with the paper's recipe, evaluates the test
set after every epoch and appends one JSON line to ``benchmarks/table1.jsonl``; the report turns the records
into tables with paired per-seed 95% intervals, a plot, and the text of ``benchmarks/RESULTS.md`` section 6 and
the README's result. One job per module:

* :mod:`.records`: the JSONL record store, the methods and the planned grid;
* :mod:`.run`: the recipe and the training runs;
* :mod:`.stats`: mean ± std and paired differences with their t-intervals;
* :mod:`.report`: the tables, the plot, the findings and the documents written from them;
* :mod:`.__main__`: the command line, ``python -m benchmarks.table1 --help``, run from the repository root.

Methods and recipes come from :mod:`lightning_ftprop.paper`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .records import DEFAULT_JSONL, METHODS, NETS, append_record, method_name, read_records, run_key
from .report import (
    BEGIN,
    DEFAULT_PLOT,
    END,
    README_MD,
    RESULTS_MD,
    findings,
    marked,
    plot_panels,
    readme_sentence,
    report,
    results_section,
    write_documents,
)
from .run import grid, recipe, run_grid, scaled_milestones, train_run
from .stats import mean_std, paired_interval, t_interval

__all__ = [
    "BEGIN",
    "DEFAULT_JSONL",
    "DEFAULT_PLOT",
    "END",
    "METHODS",
    "NETS",
    "README_MD",
    "RESULTS_MD",
    "append_record",
    "findings",
    "grid",
    "main",
    "marked",
    "mean_std",
    "method_name",
    "paired_interval",
    "parse_shard",
    "plot_panels",
    "read_records",
    "readme_sentence",
    "recipe",
    "report",
    "results_section",
    "run_grid",
    "run_key",
    "scaled_milestones",
    "t_interval",
    "train_run",
    "write_documents",
]


def __getattr__(name: str) -> Any:
    # The command line lives in __main__; importing it here eagerly would make ``python -m benchmarks.table1``
    # find it already imported and warn, so ``main`` and ``parse_shard`` load on first use.
    if name in ("main", "parse_shard"):
        return getattr(importlib.import_module(".__main__", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
