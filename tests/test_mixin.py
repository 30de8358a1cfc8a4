"""FTPropMixin: conversion from hparams, layers built in configure_model, and the reload trap."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger
from lightning_helpers import make_loader, make_trainer, unit_types
from torch import nn

import lightning_ftprop as ftp


class PlainNet(LightningModule):
    """A float model with a body built in __init__ and a head built in configure_model."""

    def __init__(self, hidden: int = 8, ftprop: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = None

    def configure_model(self):
        if self.head is None:  # idempotent, as Lightning asks
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(self.hparams.hidden, 2))

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class MixinNet(ftp.FTPropMixin, PlainNet):
    pass


SPEC = {"activation": "sign", "rule": "soft_hinge", "log_every_n_steps": 1}


def _train(tmp_path, steps=4):
    torch.manual_seed(0)
    model = MixinNet(ftprop=SPEC)
    trainer = make_trainer(max_steps=steps, logger=CSVLogger(tmp_path))
    trainer.fit(model, make_loader())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return model, str(path)


def test_mixin_converts_layers_built_in_configure_model_and_logs_diagnostics(tmp_path):
    model, _ = _train(tmp_path)
    assert [name for name, _ in ftp.threshold_units(model)] == ["body.1", "head.0"]
    assert unit_types(model) == ["Sign", "Sign"]
    assert model.apply_ftprop() == ["body.1", "head.0"]  # idempotent
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "ftprop/body_1/mismatch" in metrics and "ftprop/head_0/loss" in metrics


def test_load_from_checkpoint_rebuilds_threshold_units_before_weights_load(tmp_path):
    trained, path = _train(tmp_path)
    x = torch.randn(32, 4)
    trained.eval()
    with torch.no_grad():
        expected = trained(x)

    loaded = MixinNet.load_from_checkpoint(path)
    loaded.eval()
    assert unit_types(loaded) == ["Sign", "Sign"]
    assert not any(isinstance(m, nn.ReLU) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)

    # The trap this closes: the same architecture without the mixin loads the checkpoint strictly,
    # without any error, as a ReLU network that computes something else.
    trap = PlainNet.load_from_checkpoint(path)
    trap.eval()
    assert any(isinstance(m, nn.ReLU) for m in trap.modules())
    with torch.no_grad():
        assert not torch.allclose(trap(x), expected)


def test_load_with_a_different_spec_is_refused(tmp_path):
    _, path = _train(tmp_path, steps=1)
    with pytest.raises(ValueError, match="rule: 'soft_hinge' != 'sste'"):
        MixinNet.load_from_checkpoint(path, ftprop={"rule": "sste"})
    with pytest.raises(ValueError, match="holds a threshold network.*None"):
        MixinNet.load_from_checkpoint(path, ftprop=None)


def test_mixin_resumes_fit_with_threshold_units(tmp_path):
    _, path = _train(tmp_path, steps=2)

    class Probe(MixinNet):
        def on_train_start(self):
            self.types_at_start = unit_types(self)

    model = Probe(ftprop=SPEC)
    trainer = make_trainer(max_steps=3)
    trainer.fit(model, make_loader(), ckpt_path=path)
    assert model.types_at_start == ["Sign", "Sign"] and trainer.global_step == 3
    # the diagnostics part the mixin added resumed its counters: steps 0 and 1 before, step 2 after
    (parts,) = [cb for cb in trainer.callbacks if isinstance(cb, ftp.parts.FTPropParts)]
    diagnostics = parts.diagnostics
    assert (diagnostics.logged_steps, diagnostics.last_logged_step) == (3, 2)


def test_mixin_converts_after_an_overriding_configure_model_that_skips_super():
    class Overriding(ftp.FTPropMixin, LightningModule):
        def __init__(self, ftprop: Optional[dict] = None):
            super().__init__()
            self.save_hyperparameters()
            self.net = None

        def configure_model(self):  # does not call super().configure_model()
            if self.net is None:
                self.net = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))

    model = Overriding(ftprop={"activation": "step"})
    model.configure_model()
    assert unit_types(model) == ["Step"]
    model.configure_model()
    assert unit_types(model) == ["Step"]


def test_mixin_with_ftprop_none_trains_the_float_model():
    model = MixinNet(ftprop=None)
    make_trainer(max_steps=1).fit(model, make_loader())
    assert unit_types(model) == [] and sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2


def test_mixin_without_ftprop_hparam_is_an_error():
    class Forgetful(ftp.FTPropMixin, LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 2), nn.ReLU())

    with pytest.raises(ValueError, match="self.hparams has no 'ftprop' entry.*save_hyperparameters"):
        make_trainer(max_steps=1).fit(Forgetful(), make_loader())


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"activaton": "sign"}, "unknown ftprop spec key\\(s\\) 'activaton'; allowed keys: activation"),
        ({"rule": "nope"}, "unknown rule 'nope'"),
        ({"activation": "relu"}, "valid activations are: sign, step, qrelu"),
    ],
)
def test_mixin_bad_spec_is_an_error(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        MixinNet(ftprop=spec).configure_model()


def test_mixin_and_callback_together_are_refused():
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(log_every_n_steps=0)], max_steps=1)
    with pytest.raises(ValueError, match="2 ftprop integrations.*FTPropMixin"):
        trainer.fit(MixinNet(ftprop={"log_every_n_steps": 0, "histogram_every_n_steps": 0}), make_loader())


def test_mixin_spec_with_a_per_target_mapping_trains_and_reloads(tmp_path):
    spec = {"rule": "sste", "mapping": {"ReLU": ("qrelu", {"thresholds": 5, "mode": "per_threshold"})}}
    model = MixinNet(ftprop={**spec, "log_every_n_steps": 1})
    trainer = make_trainer(max_steps=2)
    trainer.fit(model, make_loader())
    assert [(u.thresholds, u.mode, u.rule.name) for _, u in ftp.threshold_units(model)] == [
        (5, "per_threshold", "sste")
    ] * 2
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved["callbacks"]["ftprop"]["spec"]["mapping"] == {
        "ReLU": ["qrelu", {"thresholds": 5, "mode": "per_threshold"}]
    }
    loaded = MixinNet.load_from_checkpoint(path)
    assert [u.config() for _, u in ftp.threshold_units(loaded)] == [u.config() for _, u in ftp.threshold_units(model)]
    with pytest.raises(ValueError, match="mapping"):  # another target argument is another network
        MixinNet.load_from_checkpoint(path, ftprop={"rule": "sste", "mapping": {"ReLU": ["qrelu", {"thresholds": 3}]}})
