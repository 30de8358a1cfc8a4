"""The JSONL record store: one JSON line per finished (net, method, seed) run, and what a record means.

Each run appends one line to ``--jsonl`` (default ``benchmarks/table1.jsonl``)::

    {"net": "convnet4", "activation": "sign", "rule": "soft_hinge", "seed": 0, "epochs": 10,
     "recipe": {...}, "data": "fashion_mnist", "test_acc": [..one value per epoch..], ...}

A rerun skips the runs already recorded (same :func:`run_key`: net, method, seed, epochs, recipe and data), so
the grid can span several sessions. The lines are appended with one ``write`` each, so shards running side by
side never interleave them.

Methods and recipes come from :mod:`lightning_ftprop.paper`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from lightning_ftprop.paper import METHODS as PAPER_METHODS

#: ``benchmarks/``: the folder of the records, the plot and RESULTS.md.
BENCHMARKS_DIR = Path(__file__).resolve().parents[1]
DEFAULT_JSONL = BENCHMARKS_DIR / "table1.jsonl"

#: (activation, rule) of the paper's six methods (lightning_ftprop.paper); the rule is None for the baselines.
METHODS: Tuple[Tuple[str, Optional[str]], ...] = tuple((m.activation, m.rule) for m in PAPER_METHODS)
#: The nets this grid trains (their recipes: lightning_ftprop.paper.RECIPES).
NETS = ("convnet4", "convnet8")

#: The cell the documents speak of: the planned grid's net, data and length.
PLAN = ("convnet4", "fashion_mnist", 10)


def planned_runs() -> List[Tuple[str, Optional[str], int]]:
    """The planned grid: seeds 0-2 of the six methods, then seeds 3-4 of the four threshold methods."""
    runs = [(act, rule, seed) for seed in range(3) for act, rule in METHODS]
    return runs + [(act, rule, seed) for seed in (3, 4) for act, rule in METHODS if rule is not None]


def method_name(activation: str, rule: Optional[str]) -> str:
    return activation if rule is None else f"{activation}/{rule}"


def parse_method(text: str) -> Tuple[str, Optional[str]]:
    known = {method_name(*m): m for m in METHODS}
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; valid methods are: {', '.join(known)}")
    return known[text]


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
