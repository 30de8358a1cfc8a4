"""FSDP2: ``fully_shard`` in ``configure_model`` under Lightning's ModelParallelStrategy, 2 CPU processes (gloo).

One launch of tests/fsdp2_script.py trains every run one after the other; each is compared with a plain
DDP run (or, for resnet18, with FSDP2 under ``exact``) of the same seed and data.
"""

from __future__ import annotations

import json

import pytest
import torch
from lightning_helpers import run_ddp_script

pytestmark = pytest.mark.ddp

MODES = ("exact", "packed", "recompute")
RUNS = (
    ["ddp"]
    + [f"fsdp2-callback-{m}" for m in MODES]
    + ["fsdp2-mixin-default", "fsdp2-mixin-recompute", "fsdp2-resume-default", "fsdp2-resume-recompute"]
    + ["fsdp2-resnet-exact", "fsdp2-resnet-recompute"]
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    run_ddp_script("fsdp2_script.py", out, *RUNS)
    return {run: [json.loads((out / f"{run}-rank{r}.json").read_text()) for r in (0, 1)] for run in RUNS}


def _assert_same_parameters(run: dict, reference: dict) -> None:
    assert run["params"].keys() == reference["params"].keys()
    for name in reference["params"]:
        torch.testing.assert_close(
            torch.tensor(run["params"][name]), torch.tensor(reference["params"][name]), rtol=1e-5, atol=1e-7
        )


def _assert_same_diagnostics(run: dict, reference: dict, steps) -> None:
    for step in steps:
        assert run["latest"][step].keys() == reference["latest"][step].keys()
        for key, value in reference["latest"][step].items():
            assert run["latest"][step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)


@pytest.mark.parametrize(
    "run", [f"fsdp2-callback-{m}" for m in MODES] + ["fsdp2-mixin-default", "fsdp2-mixin-recompute"]
)
def test_fsdp2_trains_to_the_parameters_of_ddp_in_every_memory_mode(runs, run):
    reference = runs["ddp"][0]
    for rank, result in enumerate(runs[run]):
        assert result["rank"] == rank
        assert result["sharded"] == ["net", "net.0", "net.3", "net.5"]  # fully_shard ran, on every rank
        assert result["types"] == ["Sign", "Sign"]  # the units were swapped on both ranks
        assert result["recomputed"] == run.endswith("recompute")
        _assert_same_parameters(result, reference)


@pytest.mark.parametrize("run", [f"fsdp2-callback-{m}" for m in MODES] + ["fsdp2-mixin-default"])
def test_fsdp2_diagnostics_are_the_global_counts_of_ddp(runs, run):
    """DDP's are the counts summed over both ranks (test_ddp.py checks that against an independent probe)."""
    reference = runs["ddp"][0]
    assert sorted(reference["latest"], key=int) == ["0", "1", "2", "3"]
    for result in runs[run]:
        _assert_same_diagnostics(result, reference, reference["latest"])


@pytest.mark.parametrize("memory", ["default", "recompute"])
def test_fsdp2_distributed_checkpoint_resumes_to_the_uninterrupted_parameters(runs, memory):
    """Saved after 2 of 4 steps as a sharded checkpoint (a folder: one file a rank), resumed into a model
    initialised from another seed: it ends where the run without the stop ends."""
    reference = runs["ddp"][0]
    for result in runs[f"fsdp2-resume-{memory}"]:
        assert result["checkpoint"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
        assert sorted(result["latest"], key=int) == ["2", "3"]  # only the steps after the stop ran
        _assert_same_parameters(result, reference)
        _assert_same_diagnostics(result, reference, ["2", "3"])


def test_fsdp2_recompute_on_resnet18_blocks_equals_exact(runs):
    """Each BasicBlock is its own FSDP2 unit: recompute's segments and re-runs gather the shards they use."""
    reference = runs["fsdp2-resnet-exact"][0]
    for result in runs["fsdp2-resnet-recompute"]:
        assert result["recomputed"] and len(result["sharded"]) == 9 and len(result["types"]) == 9
        _assert_same_parameters(result, reference)
        _assert_same_diagnostics(result, reference, reference["latest"])
