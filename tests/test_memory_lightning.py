"""memory= in FTPropCallback and FTPropMixin: per training step, identical training, stored in checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning_helpers import TinyNet, make_loader, make_trainer, run_ddp_script
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory, unit_state
from lightning_ftprop.memory import policy

TESTS = Path(__file__).resolve().parent


class WatchedNet(TinyNet):
    """TinyNet (Linear-BN-ReLU-Linear-ReLU-Linear) that records how each training step ran."""

    def __init__(self) -> None:
        super().__init__(batchnorm=True)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append((unit_state.active_policy() is policy.packed_state, "forward" in self.net.__dict__))
        return super().training_step(batch, batch_idx)


def _fit(memory_mode: Optional[str], steps: int = 4, **trainer_kwargs):
    torch.manual_seed(0)
    model = WatchedNet()
    kwargs = {} if memory_mode is None else {"memory": memory_mode}
    callback = ftp.FTPropCallback("sign", "sste", log_every_n_steps=1, **kwargs)
    trainer = make_trainer(max_steps=steps, callbacks=[callback], **trainer_kwargs)
    trainer.fit(model, make_loader(batch_size=16))
    return model, callback, trainer


@pytest.fixture(scope="module")
def fitted():
    return {mode: _fit(mode) for mode in memory.MEMORY_MODES}


def test_memory_modes_train_to_bitwise_identical_parameters(fitted):
    exact = dict(fitted["exact"][0].named_parameters())
    for mode in ("packed", "recompute"):
        model = fitted[mode][0]
        for name, p in model.named_parameters():
            assert torch.equal(p, exact[name]), (mode, name)
        for name, b in model.named_buffers():  # BN statistics: updated once per step under recompute too
            assert torch.equal(b, dict(fitted["exact"][0].named_buffers())[name]), (mode, name)


def test_each_training_step_runs_in_its_memory_mode(fitted):
    assert fitted["exact"][0].seen == [(False, False)] * 4
    assert fitted["packed"][0].seen == [(True, False)] * 4
    assert fitted["recompute"][0].seen == [(True, True)] * 4
    assert unit_state.active_policy() is None  # nothing leaks out of the training steps


def test_diagnostics_are_the_same_under_recompute(fitted):
    exact = fitted["exact"][1].latest
    assert exact and fitted["recompute"][1].latest == exact and fitted["packed"][1].latest == exact


def test_default_memory_mode_is_recorded_in_the_spec():
    callback = ftp.FTPropCallback("sign", "sste")
    assert callback.spec["memory"] == memory.DEFAULT_MEMORY
    assert f"memory={memory.DEFAULT_MEMORY!r}" in repr(callback)


def test_bad_memory_value_in_the_callback_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown memory mode 'low'; valid modes are: exact, packed, recompute"):
        ftp.FTPropCallback("sign", "sste", memory="low")


def test_memory_is_stored_in_the_checkpoint_and_another_mode_may_resume(tmp_path):
    _, _, trainer = _fit("recompute", steps=2)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)
    spec = state["callbacks"]["ftprop"]["spec"]
    assert spec["memory"] == "recompute"
    torch.manual_seed(0)
    resumed = WatchedNet()
    callback = ftp.FTPropCallback("sign", "sste", memory="exact")
    make_trainer(max_steps=3, callbacks=[callback]).fit(resumed, make_loader(batch_size=16), ckpt_path=path)
    assert resumed.seen == [(False, False)]  # the step after the checkpoint ran exact


class MixinNet(ftp.FTPropMixin, LightningModule):
    def __init__(self, ftprop: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_mixin_applies_the_memory_key_of_its_spec(tmp_path):
    models = {}
    for mode in ("exact", "recompute"):
        torch.manual_seed(0)
        models[mode] = MixinNet(ftprop={"activation": "sign", "rule": "soft_hinge", "memory": mode})
        trainer = make_trainer(max_steps=3)
        trainer.fit(models[mode], make_loader(batch_size=16))
    assert "forward" in models["recompute"].net.__dict__ and "forward" not in models["exact"].net.__dict__
    for name, p in models["recompute"].named_parameters():
        assert torch.equal(p, dict(models["exact"].named_parameters())[name]), name
    path = tmp_path / "mixin.ckpt"
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["callbacks"]["ftprop"]["spec"]["memory"] == "recompute"
    with pytest.raises(ValueError, match="valid modes are: exact, packed, recompute"):
        MixinNet(ftprop={"activation": "sign", "memory": "tiny"}).apply_ftprop()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_memory")
    run_ddp_script("ddp_memory_script.py", out, "sste:exact", "sste:recompute")
    return {
        mode: [json.loads((out / f"sste-{mode}-rank{r}.json").read_text()) for r in (0, 1)]
        for mode in ("exact", "recompute")
    }


@pytest.mark.ddp
def test_ddp_recompute_trains_to_the_parameters_of_exact(ddp_runs):
    exact, recompute = ddp_runs["exact"], ddp_runs["recompute"]
    assert [r["wrapper"] for r in exact + recompute] == ["DistributedDataParallel"] * 4
    assert [r["recomputed"] for r in recompute] == [True, True]
    for name, value in exact[0]["params"].items():
        for run in (exact[1], recompute[0], recompute[1]):
            assert run["params"][name] == value, name
