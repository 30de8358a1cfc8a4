"""lightning-ftprop demo in its fast mode: the table, the CSV files, the plot, and W&B offline logging."""

from __future__ import annotations

import csv
import re

import pytest

from lightning_ftprop.cli import main
from lightning_ftprop.demo import METHODS, DemoResult, format_table, parse_args


def test_fast_demo_trains_every_method_and_writes_table_csv_and_plot(tmp_path, capsys):
    import torch

    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert (
        main(
            [
                "demo",
                "--fast",
                "--limit-batches",
                "2",
                "--batch-size",
                "32",
                "--threads",
                "1",
                "--no-progress",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    assert torch.get_num_threads() == threads  # --threads applies to the demo only
    printed = capsys.readouterr().out
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == list(METHODS)
    for row in rows:
        assert 0.0 <= float(row["best_test_acc"]) <= 1.0 and row["epochs"] == "1"
        assert float(row["best_test_acc"]) == float(row["final_test_acc"])  # one epoch: best is final
        assert float(row["seconds"]) > 0
        assert row["method"] in printed
    assert "best test acc" in printed and "final test acc" in printed
    with open(out / "test_accuracy.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(METHODS)
    png = (out / "test_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # each method's CSV log holds what the table reports, and the threshold runs their ftprop statistics
    for row in rows:
        with open(out / "logs" / row["method"].replace("/", "-") / "metrics.csv") as handle:
            logged = list(csv.DictReader(handle))
        val_acc = [float(r["val/acc"]) for r in logged if r.get("val/acc")]
        assert val_acc and val_acc[-1] == pytest.approx(float(row["final_test_acc"]), abs=1e-4)
        ftprop_keys = {k for r in logged for k, v in r.items() if v and k.startswith("ftprop/")}
        if row["method"].startswith(("sign", "qrelu")):
            assert any(k.endswith("/mismatch") for k in ftprop_keys) and any(k.endswith("/loss") for k in ftprop_keys)
        else:
            assert not ftprop_keys  # the float baseline has no threshold units to diagnose


def test_demo_with_wandb_logs_offline_without_an_api_key(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, so no stored W&B login
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--fast",
                "--limit-batches",
                "2",
                "--no-progress",
                "--wandb",
                "--batch-size",
                "32",
                "--methods",
                "sign/soft_hinge",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    # History items are protobuf records: the key, then field 16 (value_json) as a length-prefixed string.
    logged = [float(v) for v in re.findall(rb"\x07val/acc\x82\x01.([0-9.]+)", data, flags=re.DOTALL)]
    with open(out / "results.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert logged and logged[-1] == pytest.approx(float(row["final_test_acc"]), abs=1e-4)
    assert b"train/acc" in data and b"lightning-ftprop-demo" in data


def test_unknown_demo_method_is_rejected_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--methods", "relu", "sign/hinge"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'sign/hinge'" in err and "qrelu/soft_hinge" in err


def test_results_table_reports_best_epoch_and_final_accuracy():
    table = format_table([DemoResult("sign/sste", [0.5, 0.75, 0.7], 12.0)])
    line = table.splitlines()[-1]
    assert line.split() == ["sign/sste", "75.00%", "2", "70.00%", "12.0"]


def test_wandb_goes_online_only_with_credentials_or_an_explicit_mode(tmp_path, monkeypatch):
    from lightning_ftprop.demo import _wandb_offline

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _wandb_offline()  # no key, no ~/.netrc
    netrc_file = tmp_path / ".netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    assert not _wandb_offline()  # `wandb login` credentials
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "online")
    netrc_file.unlink()
    assert not _wandb_offline()


@pytest.mark.slow
def test_demo_output_carries_no_leafspec_warning_and_no_litlogger_tip(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONWARNINGS": ""}
    command = [sys.executable, "-m", "lightning_ftprop.cli", "demo", "--fast", "--limit-batches", "1"]
    command += ["--methods", "sign/sste", "--threads", "1", "--no-progress", "--output-dir", str(tmp_path)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "sign/sste" in output and "best test acc" in output  # the run itself still reports
    assert "LeafSpec" not in output and "litlogger" not in output
