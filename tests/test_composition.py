"""One composition: FTPropCallback and FTPropMixin run the same parts, in the same order, with one checkpoint layout."""

from __future__ import annotations

import csv
import functools
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning_helpers import make_loader, make_trainer
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop.parts import FORWARDED_HOOKS, FTPropParts, TrainingStepMemory


class PlainNet(LightningModule):
    """A float model; ``ftprop`` is for the mixin, the callback ignores it."""

    def __init__(self, ftprop: Optional[dict] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


class MixinNet(ftp.FTPropMixin, PlainNet):
    pass


OPTIONS = {"activation": "sign", "rule": "soft_hinge", "memory": "packed", "log_every_n_steps": 2}


def _record_part_hooks(monkeypatch: pytest.MonkeyPatch) -> List[Tuple[str, str]]:
    """Wrap every hook of both part classes so that each call is appended, as (part, hook), to the returned list."""
    calls: List[Tuple[str, str]] = []

    def recording(cls: type, name: str, original: Any) -> Any:
        @functools.wraps(original)
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((cls.__name__, name))
            return original(self, *args, **kwargs)

        return hook

    for cls in (ftp.FTPropDiagnostics, TrainingStepMemory):
        for name in ("setup", *FORWARDED_HOOKS):
            monkeypatch.setattr(cls, name, recording(cls, name, getattr(cls, name)))
    return calls


def _layout(state: Any) -> Any:
    """The nested keys of a checkpoint entry, values dropped."""
    return {key: _layout(value) for key, value in state.items()} if isinstance(state, dict) else type(state).__name__


def _fit(tmp_path: Path, integration: str, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    calls = _record_part_hooks(monkeypatch)
    torch.manual_seed(0)
    if integration == "callback":
        model, callbacks = PlainNet(), [ftp.FTPropCallback(**OPTIONS)]
    else:
        model, callbacks = MixinNet(ftprop=OPTIONS), []
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(
        callbacks=[*callbacks, checkpoint],
        logger=CSVLogger(tmp_path, name="", version=integration),
        enable_checkpointing=True,
        log_every_n_steps=1,
        max_steps=4,
    )
    trainer.fit(model, make_loader())
    with open(tmp_path / integration / "metrics.csv") as handle:
        logged = set(next(csv.reader(handle))) - {"step", "epoch"}
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    monkeypatch.undo()
    return {
        "calls": calls,
        "logged": logged,
        "callbacks": saved["callbacks"],
        "parameters": [p.detach().clone() for p in model.parameters()],
        "integrations": [cb for cb in trainer.callbacks if isinstance(cb, FTPropParts)],
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict[str, Any]]:
    monkeypatch = pytest.MonkeyPatch()
    try:
        return {name: _fit(tmp_path_factory.mktemp(name), name, monkeypatch) for name in ("callback", "mixin")}
    finally:
        monkeypatch.undo()


def test_callback_and_mixin_call_the_parts_hooks_in_the_same_order(runs):
    callback, mixin = runs["callback"]["calls"], runs["mixin"]["calls"]
    assert callback == mixin
    # every step enters the diagnostics before the memory mode, and leaves them in the same order
    step = [call for call in callback if call[1] in ("on_train_batch_start", "on_train_batch_end")]
    assert step[:4] == [
        ("FTPropDiagnostics", "on_train_batch_start"),
        ("TrainingStepMemory", "on_train_batch_start"),
        ("FTPropDiagnostics", "on_train_batch_end"),
        ("TrainingStepMemory", "on_train_batch_end"),
    ]
    assert len(step) == 4 * 4 and ("FTPropDiagnostics", "setup") in callback


def test_callback_and_mixin_log_the_same_keys(runs):
    logged = runs["callback"]["logged"]
    assert logged == runs["mixin"]["logged"]
    assert {"ftprop/saved_MB", "ftprop/body_1/mismatch", "ftprop/body_3/loss"} <= logged


def test_callback_and_mixin_write_one_checkpoint_layout_keyed_by_state_key(runs):
    callback, mixin = runs["callback"]["callbacks"], runs["mixin"]["callbacks"]
    assert _layout(callback) == _layout(mixin)
    ftprop_state = callback["ftprop"]
    assert set(ftprop_state) == {"integration", "spec", "layers", "FTPropDiagnostics", "TrainingStepMemory"}
    assert (ftprop_state["integration"], mixin["ftprop"]["integration"]) == ("FTPropCallback", "FTPropMixin")
    assert ftprop_state["spec"] == mixin["ftprop"]["spec"] and ftprop_state["layers"] == ["body.1", "body.3"]
    assert ftprop_state["FTPropDiagnostics"] == mixin["ftprop"]["FTPropDiagnostics"]
    assert ftprop_state["FTPropDiagnostics"]["logged_steps"] == 2  # global steps 0 and 2
    assert not any(key.startswith("FTProp") for key in callback)  # no part saves a state of its own


def test_callback_and_mixin_train_to_the_same_parameters(runs):
    for a, b in zip(runs["callback"]["parameters"], runs["mixin"]["parameters"], strict=True):
        assert torch.equal(a, b)
    (callback,), (mixin,) = runs["callback"]["integrations"], runs["mixin"]["integrations"]
    assert type(callback) is ftp.FTPropCallback and type(mixin) is FTPropParts


def test_a_second_integration_on_one_trainer_is_refused_naming_both():
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(log_every_n_steps=0)], max_steps=1)
    with pytest.raises(ValueError, match=r"2 ftprop integrations \(FTPropCallback, FTPropMixin\); use exactly one"):
        trainer.fit(MixinNet(ftprop={"log_every_n_steps": 0}), make_loader())
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(), ftp.FTPropDiagnostics()], max_steps=1)
    with pytest.raises(ValueError, match=r"2 ftprop integrations \(FTPropCallback, FTPropDiagnostics\)"):
        trainer.fit(PlainNet(), make_loader())


def test_the_float_mixin_model_reloads_a_callback_checkpoint_as_the_threshold_network(tmp_path):
    torch.manual_seed(0)
    trained = PlainNet()
    trainer = make_trainer(callbacks=[ftp.FTPropCallback("step", log_every_n_steps=0)], max_steps=2)
    trainer.fit(trained, make_loader())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    reloaded = MixinNet.load_from_checkpoint(tmp_path / "run.ckpt")  # hparams ftprop=None: the float model
    assert [type(unit).__name__ for _, unit in ftp.threshold_units(reloaded)] == ["Step", "Step"]
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), trained.eval()(x))


def test_the_composite_pickles_after_setup_keeping_its_spec_and_parts_state():
    model, callback = PlainNet(), ftp.FTPropCallback(**OPTIONS)
    make_trainer(callbacks=[callback], max_steps=2).fit(model, make_loader())
    again = pickle.loads(pickle.dumps(callback))  # ddp_spawn pickles the Trainer's callbacks
    assert again.spec == callback.spec and again.diagnostics.state_dict() == callback.diagnostics.state_dict()
    assert callback.layers == ["body.1", "body.3"] and again.layers == []  # the model is not pickled with it
