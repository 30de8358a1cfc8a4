"""benchmarks/table1.py: one tiny run through ImageClassifier + Trainer, its JSONL record, the skip on rerun, the report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table1():
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--embedded", "--nets", "convnet4", "--seeds", "1", "--epochs", "2", "--limit-batches", "3", "--threads", "1"]


def test_table1_records_one_json_line_per_run_and_rerun_skips_it(table1, tmp_path, capsys):
    jsonl = tmp_path / "table1.jsonl"
    assert table1.main([*TINY, "--methods", "sign/soft_hinge", "--jsonl", str(jsonl)]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert (record["net"], record["activation"], record["rule"], record["seed"], record["epochs"]) == (
        "convnet4",
        "sign",
        "soft_hinge",
        0,
        2,
    )
    assert record["data"] == "fashion_mnist_embedded"
    assert record["recipe"]["lr"] == 2.5e-4 and record["recipe"]["weight_decay"] == 5e-4
    assert record["recipe"]["batch_size"] == 64 and record["recipe"]["milestones"] == [2]
    assert len(record["test_acc"]) == 2 and all(0.0 <= a <= 100.0 for a in record["test_acc"])

    capsys.readouterr()
    table1.main([*TINY, "--methods", "sign/soft_hinge", "--jsonl", str(jsonl)])
    assert "skip convnet4 sign/soft_hinge seed 0" in capsys.readouterr().out
    assert len(jsonl.read_text().splitlines()) == 1


def _record(activation, rule, seed, accs):
    return {
        "net": "convnet4",
        "activation": activation,
        "rule": rule,
        "seed": seed,
        "epochs": 2,
        "recipe": {},
        "data": "fashion_mnist",
        "test_acc": accs,
    }


def test_table1_report_pairs_ftp_sh_with_sste_per_seed(table1, tmp_path):
    records = [
        _record("sign", "sste", 0, [80.0, 82.0]),
        _record("sign", "sste", 1, [81.0, 83.0]),
        _record("sign", "soft_hinge", 0, [81.0, 84.0]),
        _record("sign", "soft_hinge", 1, [82.0, 84.0]),
    ]
    text = table1.report(records, tmp_path / "plot.png")
    # best: differences +2 and +1 -> mean +1.50, 95% t-interval 1.5 +- 12.706 * 0.7071 / sqrt(2) = [-4.85, +7.85]
    assert "| convnet4 | fashion_mnist | 2 | sign | 2 | +1.50 [-4.85, +7.85] | +1.50 [-4.85, +7.85] |" in text
    assert "| sign/sste | 2 | 82.50 ± 0.71 | 82.50 ± 0.71 |" in text
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_table1_report_compares_each_method_with_the_float_baselines_per_seed(table1):
    records = [
        _record("sign", "soft_hinge", 0, [81.0, 84.0]),
        _record("sign", "soft_hinge", 1, [82.0, 84.0]),
        _record("sign", "soft_hinge", 2, [82.0, 83.0]),
        _record("relu", None, 0, [85.0, 86.0]),
        _record("relu", None, 1, [86.0, 87.0]),
    ]
    text = table1.report(records, None)
    # seeds 0 and 1 pair: best 84 - 86 = -2 and 84 - 87 = -3 -> mean -2.50 +- 12.706 * 0.7071 / sqrt(2) = [-8.85, +3.85]
    assert "| convnet4 | fashion_mnist | 2 | sign/soft_hinge | relu | 2 | -2.50 [-8.85, +3.85] |" in text
    # Table 1 layout: one row for the net, with n per cell and "-" where a method has no run
    assert "| convnet4 | fashion_mnist | 2 | - | 83.67 ± 0.58 (n=3) | - | - | 86.50 ± 0.71 (n=2) | - |" in text


def test_table1_plot_averages_only_the_seeds_both_rules_ran(table1):
    records = [
        _record("sign", "sste", 0, [80.0, 82.0]),
        _record("sign", "sste", 1, [81.0, 83.0]),
        _record("sign", "soft_hinge", 0, [81.0, 84.0]),
        _record("sign", "soft_hinge", 1, [82.0, 84.0]),
        _record("sign", "soft_hinge", 2, [50.0, 50.0]),  # no SSTE partner: must not enter the plot
        _record("relu", None, 1, [90.0, 91.0]),
        _record("relu", None, 5, [10.0, 10.0]),  # outside the matched seeds
    ]
    cells = {}
    for r in records:
        cells.setdefault((r["net"], r["data"], r["epochs"], r["activation"], r["rule"]), {})[r["seed"]] = r["test_acc"]
    ((title, seeds, curves),) = table1.plot_panels(cells)
    assert seeds == [0, 1] and "seeds 0,1" in title
    assert curves["FTP-SH"][0] == [81.5, 84.0] and curves["SSTE"][0] == [80.5, 82.5]
    assert curves["relu (n=1)"][0] == [90.0, 91.0]


def test_table1_rejects_unknown_methods_and_bad_shards(table1):
    with pytest.raises(SystemExit):
        table1.main(["--methods", "sign/hinge_typo"])
    with pytest.raises(SystemExit):
        table1.main(["--shard", "2/2"])


def test_scaled_milestones_follow_the_paper_at_300_epochs(table1):
    assert table1.scaled_milestones("convnet4", 300) == [200, 250]
    assert table1.scaled_milestones("convnet4", 10) == [8, 9]
    assert table1.scaled_milestones("convnet4", 1) == []
