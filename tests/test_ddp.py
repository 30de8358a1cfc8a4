"""FTPropCallback under real 2-process CPU DDP (gloo), run as a subprocess script (see ddp_script.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning_helpers import reference_stats, run_ddp_script

pytestmark = pytest.mark.ddp

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run_ddp_script("ddp_script.py", out)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_ddp_both_ranks_swap_and_end_with_identical_parameters(ranks):
    rank0, rank1 = ranks
    assert [rank0["rank"], rank1["rank"]] == [0, 1]
    for r in ranks:
        assert r["layers"] == ["net.2", "net.4"] and r["types"] == ["Sign", "Sign"]
        assert r["wrapper"] == "DistributedDataParallel"
    assert rank0["params"].keys() == rank1["params"].keys()
    for name in rank0["params"]:
        torch.testing.assert_close(torch.tensor(rank0["params"][name]), torch.tensor(rank1["params"][name]))


def test_sync_batchnorm_plugin_keeps_threshold_units():
    """What Trainer(sync_batchnorm=True) does in DDP's strategy.setup, after the callback's swap.

    torch refuses SyncBatchNorm in CPU DDP ("SyncBatchNorm layers only work with GPU modules"), so
    on CPU the Trainer run itself cannot happen; the GPU test below runs it where CUDA exists.
    """
    from lightning.pytorch.plugins import TorchSyncBatchNorm
    from lightning_helpers import TinyNet, unit_types

    import lightning_ftprop as ftp

    model = TinyNet(batchnorm=True)
    ftp.convert(model, "sign")
    units = [u for _, u in ftp.threshold_units(model)]
    model = TorchSyncBatchNorm().apply(model)
    assert isinstance(model.net[1], torch.nn.SyncBatchNorm)
    assert [u for _, u in ftp.threshold_units(model)] == units
    model(torch.randn(8, 4)).sum().backward()  # single process: SyncBatchNorm computes as BatchNorm
    model = TorchSyncBatchNorm().revert(model)
    assert not isinstance(model.net[1], torch.nn.SyncBatchNorm) and unit_types(model) == ["Sign", "Sign"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm needs CUDA devices in DDP")
def test_sync_batchnorm_trainer_on_gpu():
    import lightning.pytorch as pl
    from lightning_helpers import TinyNet, make_loader, unit_types

    import lightning_ftprop as ftp

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules())
            self.types = unit_types(pl_module)

    probe, callback = Probe(), ftp.FTPropCallback(log_every_n_steps=1)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        strategy="ddp",
        sync_batchnorm=True,
        max_steps=2,
        logger=False,
        callbacks=[callback, probe],
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(TinyNet(batchnorm=True), make_loader())
    assert probe.sync == 1 and probe.types == ["Sign", "Sign"] and callback.latest


def test_ddp_diagnostics_equal_the_global_counts(ranks):
    rank0, rank1 = ranks
    assert sorted(rank0["latest"], key=int) == ["0", "1", "2"]
    local_differs = False
    for step in rank0["latest"]:
        merged = {}
        for layer in rank0["local"][step]:
            a, b = rank0["local"][step][layer], rank1["local"][step][layer]
            merged[layer] = {k: a[k] + b[k] for k in a}
        expected = reference_stats(merged)
        for r in ranks:  # every rank computes the synced values
            assert r["latest"][step].keys() == expected.keys()
            for key, value in expected.items():
                assert r["latest"][step][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (step, key)
        local_differs |= reference_stats(rank0["local"][step]) != pytest.approx(expected)
    assert local_differs  # the ranks saw different data, so the reduction mattered
