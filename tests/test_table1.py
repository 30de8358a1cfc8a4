"""benchmarks/table1/: one tiny run through ImageClassifier + Trainer, its JSONL record, the skip on rerun, the report."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table1():
    # benchmarks/ is a folder of the repository (a namespace package), not an installed package
    added = str(ROOT) not in sys.path
    if added:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("benchmarks.table1")
    finally:
        if added:
            sys.path.remove(str(ROOT))


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
    assert record["accelerator"] == "CPUAccelerator"

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
    assert "| sign | 2 | +1.50 [-4.85, +7.85] | +1.50 [-4.85, +7.85] | 0: +2.00, 1: +1.00 |" in text
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


def test_table1_rejects_unknown_methods_bad_shards_and_accelerators(table1, capsys):
    with pytest.raises(SystemExit):
        table1.main(["--methods", "sign/hinge_typo"])
    with pytest.raises(SystemExit):
        table1.main(["--shard", "2/2"])
    with pytest.raises(SystemExit):
        table1.main(["--accelerator", "tpu"])
    err = capsys.readouterr().err
    assert "invalid choice: 'tpu'" in err and "'cpu', 'gpu'" in err


def test_scaled_milestones_follow_the_paper_at_300_epochs(table1):
    assert table1.scaled_milestones("convnet4", 300) == [200, 250]
    assert table1.scaled_milestones("convnet4", 10) == [8, 9]
    assert table1.scaled_milestones("convnet4", 1) == []


def test_committed_results_and_readme_say_what_the_committed_records_give(table1):
    records = table1.read_records(table1.DEFAULT_JSONL)
    assert records, "benchmarks/table1.jsonl holds no run"
    assert table1.marked(table1.RESULTS_MD.read_text()) == table1.results_section(records)
    assert table1.marked(table1.README_MD.read_text()) == table1.readme_sentence(records)


def _pairs(activation, sh_best, sste_best):
    out = []
    for seed, (a, b) in enumerate(zip(sh_best, sste_best)):
        out += [_record(activation, "soft_hinge", seed, [a - 1.0, a]), _record(activation, "sste", seed, [b - 1.0, b])]
    return out


@pytest.fixture
def plan_epochs(table1, monkeypatch):
    # the synthetic records train 2 epochs; point the documents at them (every module reads records.PLAN)
    monkeypatch.setattr(table1.records, "PLAN", ("convnet4", "fashion_mnist", 2))


def test_findings_name_a_winner_only_when_the_interval_excludes_zero(table1, plan_epochs):
    # sign: +1, +2, +1.5 -> interval above zero; qrelu: +1, -1, +0.5 -> contains zero
    records = _pairs("sign", [91.0, 92.0, 91.5], [90.0, 90.0, 90.0]) + _pairs(
        "qrelu", [90.0, 89.0, 90.5], [89.0, 90.0, 90.0]
    )
    sign, qrelu = table1.findings(records)[:2]
    assert sign.startswith("sign, 3 paired seeds: FTP-SH - SSTE is +1.50 [+0.26, +2.74]")
    assert "FTP-SH ahead (the 95% interval excludes zero)" in sign and "in 3 of 3 seeds" in sign
    assert "not resolved (the 95% interval contains zero)" in qrelu and "in 2 of 3 seeds" in qrelu
    sentence = table1.readme_sentence(records)
    assert "+1.50 points for sign (95% interval [+0.26, +2.74] over 3 paired seeds: FTP-SH ahead)" in sentence
    assert "for 2-bit qReLU" in sentence and "no winner resolved" in sentence
    assert "12 of the 26 planned runs are recorded" in sentence
    flipped = _pairs("sign", [90.0, 90.0, 90.0], [91.0, 92.0, 91.5])
    assert "SSTE ahead" in table1.readme_sentence(flipped)


def test_write_replaces_only_the_marked_text_and_refuses_a_document_without_marks(table1, plan_epochs, tmp_path):
    records = _pairs("sign", [91.0, 92.0], [90.0, 90.0])
    results, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    results.write_text(f"# head\n\n{table1.BEGIN}\nold figures\n{table1.END}\n\ntail\n")
    readme.write_text(f"intro\n{table1.BEGIN}\n{table1.END}\noutro\n")
    table1.write_documents(records, results, readme)
    text = results.read_text()
    assert text.startswith("# head\n\n") and text.endswith(f"{table1.END}\n\ntail\n") and "old figures" not in text
    assert table1.marked(text) == table1.results_section(records)
    assert "**4 of the 26 planned convnet4 runs are recorded**; missing: relu seed 0" in text
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("outro\n")
    readme.write_text("no marks here\n")
    with pytest.raises(SystemExit, match="must hold the line"):
        table1.write_documents(records, results, readme)
    assert readme.read_text() == "no marks here\n"
