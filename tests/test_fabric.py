"""FabricFTProp under real 2-process CPU DDP (``Fabric(strategy="ddp")``, gloo), in every memory mode."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from fabric_script import run_single
from lightning_helpers import run_ddp_script

pytestmark = pytest.mark.ddp

MODES = ("exact", "packed", "recompute")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("fabric")
    run_ddp_script("fabric_script.py", out)
    return out


def _read(out, name):
    return json.loads((out / name).read_text())


@pytest.mark.parametrize("memory", MODES)
def test_fabric_ddp_trains_to_the_single_process_parameters_in_every_memory_mode(out, memory):
    reference = run_single(memory)
    for rank in (0, 1):
        result = _read(out, f"fabric-{memory}-rank{rank}.json")
        assert result["world_size"] == 2 and result["layers"] == ["2", "4"]
        for name, value in reference["params"].items():
            torch.testing.assert_close(torch.tensor(result["params"][name]), torch.tensor(value), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("memory", MODES)
def test_fabric_statistics_are_summed_over_the_ranks(out, memory):
    """The counts of both ranks' batches, as the single process gathers them; the loss statistic is in units
    of dL/dh, which the reference's halved losses halve."""
    reference = run_single(memory)["stats"]
    for rank in (0, 1):
        stats = _read(out, f"fabric-{memory}-rank{rank}.json")["stats"]
        assert stats.keys() == reference.keys() == {"0", "1", "2"}
        for step, values in reference.items():
            assert stats[step].keys() == values.keys() and len(values) == 8
            for key, value in values.items():
                want = 2 * value if key.endswith("/loss") else value
                assert stats[step][key] == pytest.approx(want, rel=1e-5, abs=1e-7), (step, key)


def test_fabric_log_dict_writes_the_statistics_to_the_logger(out):
    (path,) = (out / "logs").rglob("metrics.csv")
    rows = list(csv.DictReader(path.open()))
    assert [row["step"] for row in rows if row.get("ftprop/2/mismatch")] == ["0", "1", "2"] * len(MODES)
