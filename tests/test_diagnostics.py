"""Per-layer target statistics: hand-computed values, logging cadence, CSV and real offline W&B runs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning_helpers import (
    GradProbe,
    TinyNet,
    make_loader,
    make_trainer,
    read_wandb_history,
    reference_counts,
    reference_stats,
)

import lightning_ftprop as ftp
from lightning_ftprop.diagnostics import layer_key, rule_coordinates, stats_from_counts, target_counts
from lightning_ftprop.rules import get_rule


def test_target_counts_match_a_hand_computation():
    u = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0, 1.0])
    g = torch.tensor([0.3, -0.2, 0.1, 0.0, -1.0, 0.5])
    # t = sign(-g)      = [-1, +1, -1,  0, +1, -1]
    # side (u > 0)      = [-1, -1, -1, +1, +1, +1]
    # ignored: #3; mismatch: #1 (t=+1, side -1) and #5 (t=-1, side +1)
    # sste dL/du = -t*1[|t*u| <= 1] is zero for #0 (|u|=2) and #4 (|u|=2): 2 of 5 active units
    # sste L = clip(1 - t*u, 0, 2) = [0, 1.5, 1, -, 0, 2]; sum |g|*L = .2*1.5 + .1*1 + .5*2 = 1.4
    counts, loss = target_counts(u, g, get_rule("sste"))
    assert counts.tolist() == [6, 1, 2, 2]
    assert loss.item() == pytest.approx(1.4)
    stats = stats_from_counts(counts.tolist(), loss.item())
    assert stats == pytest.approx({"mismatch": 2 / 6, "ignored": 1 / 6, "saturated": 2 / 5, "loss": 1.4 / 6})


def test_hinge_saturates_where_the_target_is_met_with_margin():
    u = torch.tensor([2.0, 0.5, -3.0])
    g = torch.tensor([-1.0, -1.0, -1.0])  # t = +1 everywhere
    counts, loss = target_counts(u, g, get_rule("hinge"))
    assert counts.tolist() == [3, 0, 1, 1]  # #2 is on the wrong side; #0 has t*u = 2 >= 1
    assert loss.item() == pytest.approx(0 + 0.5 + 4.0)


def test_rule_coordinates_of_qrelu_follow_its_backward_mode():
    z = torch.tensor([0.0, 0.25, 1.0])
    assert [u.tolist() for u in rule_coordinates(ftp.QReLU(mode="single"), z)] == [[-1.0, -0.5, 1.0]]
    per_threshold = rule_coordinates(ftp.QReLU(thresholds=3, mode="per_threshold"), z)
    assert [u.tolist() for u in per_threshold] == [[0.0, 0.25, 1.0], [-0.5, -0.25, 0.5], [-1.0, -0.75, 0.0]]
    assert [u.tolist() for u in rule_coordinates(ftp.Sign(), z)] == [z.tolist()]


def _per_threshold_reference(records, thresholds, rule):
    """Raw sums per layer over the backward's own coordinates ``u_k = z - k/(thresholds-1)``, in float64.

    Each coordinate is first checked against the unit's actual backward: ``dz`` must equal
    ``(1/thresholds) * sum_k |g| * dL/du(u_k, sign(-g))``, so these are the coordinates the backward uses.
    """
    out = {}
    for name, z, g in records:
        thetas = [k / (thresholds - 1) for k in range(thresholds)]
        us = [z.double() - theta for theta in thetas]
        t = -torch.sign(g.double())
        zz = z.clone().requires_grad_(True)
        ftp.functional.qrelu(zz, rule, thresholds=thresholds, mode="per_threshold").backward(g)
        expected = sum(g.double().abs() * rule.grad(u, t) for u in us) / thresholds
        torch.testing.assert_close(zz.grad.double(), expected, rtol=1e-5, atol=1e-7)
        c = out.setdefault(name, dict(n=0, ignored=0, mismatch=0, saturated=0, loss=0.0))
        active = t != 0
        for u in us:
            side = torch.where(u > 0, 1.0, -1.0).double()
            c["n"] += u.numel()
            c["ignored"] += int((~active).sum())
            c["mismatch"] += int((active & (t != side)).sum())
            c["saturated"] += int((active & (rule.grad(u, t) == 0)).sum())
            c["loss"] += float(torch.where(active, g.double().abs() * rule.loss(u, t), 0.0).sum())
    return out


def test_qrelu_per_threshold_statistics_count_in_the_backward_coordinates(tmp_path):
    torch.manual_seed(0)
    probe = GradProbe()
    callback = ftp.FTPropCallback(
        "qrelu", "sste", unit_kwargs={"thresholds": 3, "mode": "per_threshold"}, log_every_n_steps=1
    )
    logger = CSVLogger(tmp_path)
    make_trainer(callbacks=[probe, callback], logger=logger, max_steps=3).fit(TinyNet(lr=0.5), make_loader())
    rows = _csv_rows(logger)
    assert [int(row["step"]) for row in rows] == [0, 1, 2]
    rule = get_rule("sste")
    saw_saturated = False
    for row in rows:
        reference = _per_threshold_reference(probe.records[int(row["step"])], 3, rule)
        for name, c in reference.items():
            key = name.replace(".", "_")
            assert c["n"] == 3 * 8 * 8  # batch 8 x 8 hidden units x 3 thresholds
            assert float(row[f"ftprop/{key}/mismatch"]) == pytest.approx(c["mismatch"] / c["n"], abs=1e-7)
            assert float(row[f"ftprop/{key}/ignored"]) == pytest.approx(c["ignored"] / c["n"], abs=1e-7)
            active = c["n"] - c["ignored"]
            assert float(row[f"ftprop/{key}/saturated"]) == pytest.approx(c["saturated"] / active, abs=1e-7)
            assert float(row[f"ftprop/{key}/loss"]) == pytest.approx(c["loss"] / c["n"], rel=1e-5, abs=1e-7)
            saw_saturated |= c["saturated"] > 0
    assert saw_saturated  # the saturation count is exercised, not only zeros


def test_layer_keys_are_sanitised():
    assert layer_key("layer1.0.act") == "layer1_0_act"
    assert layer_key("features.3-conv/relu6") == "features_3_conv_relu6"
    assert layer_key("") == "root"


class StateProbe(Callback):
    """Placed before the diagnostics: reads their counts before they are logged and reset."""

    def __init__(self, diagnostics):
        self.diagnostics, self.gathered = diagnostics, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.gathered[trainer.global_step - 1] = int(self.diagnostics.metric.counts.sum())


def _csv_rows(logger):
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return [row for row in csv.DictReader(f) if any(k.startswith("ftprop/") and row[k] for k in row)]


def test_logged_statistics_equal_an_independent_recomputation(tmp_path):
    torch.manual_seed(0)
    probe = GradProbe()
    diagnostics = ftp.FTPropCallback("sign", "soft_hinge", log_every_n_steps=3)
    state = StateProbe(diagnostics.diagnostics)
    logger = CSVLogger(tmp_path)
    make_trainer(callbacks=[probe, state, diagnostics], logger=logger, max_steps=7).fit(TinyNet(), make_loader())

    rows = _csv_rows(logger)
    assert [int(row["step"]) for row in rows] == [0, 3, 6]
    # nothing was gathered on the steps that do not log: no hooks, no counts, no device sync
    assert {step for step, total in state.gathered.items() if total} == {0, 3, 6}
    for row in rows:
        expected = reference_stats(reference_counts(probe.records[int(row["step"])]))
        assert {k for k in row if k.startswith("ftprop/")} == set(expected)
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert set(diagnostics.latest) == {f"ftprop/net_{i}/{s}" for i in (2, 4) for s in ftp.diagnostics.STATS}


def test_wandb_offline_run_holds_ftprop_keys_and_histograms(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
    logger = WandbLogger(project="ftprop-test", save_dir=str(tmp_path), offline=True)
    callback = ftp.FTPropCallback(log_every_n_steps=1, histogram_every_n_steps=2)
    make_trainer(callbacks=[callback], logger=logger, max_steps=3).fit(TinyNet(), make_loader())
    logger.experiment.finish()  # flush and close this run's .wandb file

    rows = read_wandb_history(str(tmp_path / "wandb"))
    stats = [r for r in rows if "ftprop/net_2/mismatch" in r]
    assert [json.loads(r["trainer/global_step"]) for r in stats] == [0, 1, 2]
    assert json.loads(stats[-1]["ftprop/net_4/ignored"]) == pytest.approx(callback.latest["ftprop/net_4/ignored"])
    histograms = [r for r in rows if "ftprop/net_2/preact/_type" in r]
    assert [json.loads(r["trainer/global_step"]) for r in histograms] == [0, 2]
    assert json.loads(histograms[0]["ftprop/net_4/preact/_type"]) == "histogram"
    counts = json.loads(histograms[0]["ftprop/net_2/preact/values"])
    assert sum(counts) == 8 * 8  # batch 8 x 8 hidden units, one call
