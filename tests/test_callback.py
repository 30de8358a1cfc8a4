"""FTPropCallback on a real Trainer: swap timing, idempotence, checkpoints, bad input, companions."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.demos import BoringModel, LightningTransformer
from lightning_helpers import (
    GradProbe,
    TinyData,
    TinyNet,
    make_loader,
    make_trainer,
    reference_counts,
    reference_stats,
    unit_types,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_ftprop as ftp


class RecordingNet(TinyNet):
    """Records which modules exist when the optimizers are built."""

    def configure_optimizers(self):
        self.units_at_optimizer_setup = unit_types(self)
        return super().configure_optimizers()


def test_callback_swaps_in_setup_before_optimizers_and_is_idempotent():
    model = RecordingNet()
    callback = ftp.FTPropCallback("sign", "soft_hinge", log_every_n_steps=0)
    trainer = make_trainer(callbacks=[callback], max_steps=2, limit_val_batches=2)
    loader = make_loader()
    trainer.fit(model, loader, loader)
    assert model.units_at_optimizer_setup == ["Sign", "Sign"]
    assert callback.layers == ["net.2", "net.4"]
    units = [u for _, u in ftp.threshold_units(model)]
    trainer.validate(model, loader, verbose=False)
    trainer.fit(model, loader)  # a second fit (max_steps already reached) sets up again
    assert [u for _, u in ftp.threshold_units(model)] == units  # the very same unit objects
    assert callback.layers == ["net.2", "net.4"]
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(activation="tanh"), ValueError, "valid activations are: sign, step, qrelu"),
        (dict(rule="no_such_rule"), ValueError, "valid rules are:"),
        (dict(mapping={"ReLUU": "sign"}), ValueError, "unknown mapping key 'ReLUU'"),
        (dict(mapping={"ReLU": "tanh"}), ValueError, "unknown activation 'tanh'"),
        (dict(activation="qrelu", unit_kwargs={"thresholds": 1}), ValueError, "thresholds must be an int >= 2"),
        (
            dict(activation="sign", unit_kwargs={"thresholds": 3}),
            TypeError,
            "does not take thresholds; its arguments are: rule, weighted, inplace",
        ),
        (dict(include=[1]), TypeError, "include must be"),
        (dict(weighted="yes"), TypeError, "weighted must be True or False"),
        (dict(log_every_n_steps=-1), ValueError, "log_every_n_steps must be an int >= 0"),
    ],
)
def test_callback_validates_arguments_in_init(kwargs, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(")):
        ftp.FTPropCallback(**kwargs)


def test_model_without_activation_modules_is_an_error():
    trainer = make_trainer(callbacks=[ftp.FTPropCallback()], max_steps=1)
    with pytest.raises(ValueError, match="found no activation to swap in BoringModel.*Linear"):
        trainer.fit(BoringModel())


def test_pytorch_lightning_namespace_is_refused():
    pytorch_lightning = pytest.importorskip("pytorch_lightning")

    class StandaloneNet(pytorch_lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pytorch_lightning.Trainer(
        accelerator="cpu",
        max_steps=1,
        callbacks=[ftp.FTPropCallback()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(TypeError, match="not a lightning.pytorch.Trainer.*import Trainer, LightningModule"):
        trainer.fit(StandaloneNet(), make_loader())
    with pytest.raises(TypeError, match="derives from pytorch_lightning classes"):

        class MixedNet(ftp.FTPropMixin, pytorch_lightning.LightningModule):
            pass


def _fit_and_checkpoint(tmp_path, steps=3, **callback_kwargs):
    torch.manual_seed(0)
    model = TinyNet()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=steps)
    trainer = make_trainer(
        callbacks=[ftp.FTPropCallback(log_every_n_steps=0, **callback_kwargs), checkpoint],
        enable_checkpointing=True,
        max_steps=steps,
    )
    trainer.fit(model, make_loader())
    return model, str(tmp_path / "last.ckpt")


class StartProbe(TinyNet):
    def on_train_start(self):
        self.types_at_start = unit_types(self)
        self.params_at_start = [p.detach().clone() for p in self.parameters()]
        self.step_at_start = self.trainer.global_step


def test_resume_from_checkpoint_keeps_threshold_units(tmp_path):
    trained, path = _fit_and_checkpoint(tmp_path, rule="sste")
    checkpoint = torch.load(path, weights_only=True)  # the stored spec is plain data
    state = checkpoint["callbacks"]["ftprop"]
    assert state["spec"]["rule"] == "sste" and state["layers"] == ["net.2", "net.4"]

    resumed = StartProbe()  # a fresh ReLU model: the callback must swap it before the weights load
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(rule="sste", log_every_n_steps=0)], max_steps=5)
    trainer.fit(resumed, make_loader(), ckpt_path=path)
    assert resumed.types_at_start == ["Sign", "Sign"]
    assert resumed.step_at_start == 3 and trainer.global_step == 5
    for start, saved in zip(resumed.params_at_start, trained.parameters()):
        torch.testing.assert_close(start, saved.detach())


class NamedCallback(ftp.FTPropCallback):
    """A user's subclass: its own class name, the base's state key."""

    def __init__(self, **kwargs):
        super().__init__("qrelu", "sste", mapping={"ReLU": ("qrelu", {"thresholds": 5})}, log_every_n_steps=2, **kwargs)
        self.fit_starts = 0

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        self.fit_starts += 1


def test_subclassed_callback_resumes_its_state_and_the_diagnostics_counters(tmp_path):
    torch.manual_seed(0)
    first = NamedCallback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3)
    trained = TinyNet()
    make_trainer(callbacks=[first, checkpoint], enable_checkpointing=True, max_steps=3).fit(trained, make_loader())
    assert (first.diagnostics.logged_steps, first.diagnostics.last_logged_step) == (2, 2)  # steps 0 and 2
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "ftprop" in saved["callbacks"] and not any("Named" in str(k) for k in saved["callbacks"])
    state = saved["callbacks"]["ftprop"]
    assert state["spec"]["mapping"] == {"ReLU": ["qrelu", {"thresholds": 5}]}
    assert state["FTPropDiagnostics"]["logged_steps"] == 2 and state["FTPropDiagnostics"]["last_logged_step"] == 2

    resumed = StartProbe()
    second = NamedCallback()
    trainer = make_trainer(callbacks=[second], max_steps=7)
    trainer.fit(resumed, make_loader(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed.step_at_start == 3 and second.fit_starts == 1
    assert second.layers == ["net.2", "net.4"] and [u.thresholds for _, u in ftp.threshold_units(resumed)] == [5, 5]
    for start, before in zip(resumed.params_at_start, trained.parameters()):
        torch.testing.assert_close(start, before.detach())
    # the counter continued: 2 logged before the checkpoint, then steps 4 and 6
    assert (second.diagnostics.logged_steps, second.diagnostics.last_logged_step) == (4, 6)
    # a changed spec in the subclass's saved state is still refused: the state was found
    state["spec"]["rule"] = "hinge"
    with pytest.raises(ValueError, match="rule: 'hinge' != 'sste'"):
        NamedCallback().load_state_dict(state)
    # the library loader finds the subclass's spec under the same key
    from lightning_ftprop.checkpoint import load_checkpoint_model

    loaded = load_checkpoint_model(str(tmp_path / "last.ckpt"), "lightning_helpers.TinyNet")
    assert [type(u).__name__ for _, u in ftp.threshold_units(loaded)] == ["QReLU", "QReLU"]


def test_checkpoint_with_a_different_spec_is_refused(tmp_path):
    _, path = _fit_and_checkpoint(tmp_path)
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(rule="sste", log_every_n_steps=0)], max_steps=5)
    with pytest.raises(ValueError, match="rule: 'soft_hinge' != 'sste'"):
        trainer.fit(TinyNet(), make_loader(), ckpt_path=path)
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(activation="step", log_every_n_steps=0)])
    with pytest.raises(ValueError, match="activation: 'sign' != 'step'"):
        trainer.validate(TinyNet(), make_loader(), ckpt_path=path, verbose=False)


def test_two_ftprop_callbacks_are_refused():
    trainer = make_trainer(callbacks=[ftp.FTPropCallback(), ftp.FTPropDiagnostics()], max_steps=1)
    with pytest.raises(ValueError, match="2 ftprop integrations"):
        trainer.fit(TinyNet(), make_loader())


def test_bf16_accumulation_checkpoint_and_early_stopping(tmp_path):
    torch.manual_seed(0)
    model = TinyNet(lr=0.0)  # no learning: val_loss never improves, so EarlyStopping must stop the run
    probe = GradProbe()
    callback = ftp.FTPropCallback(rule="soft_hinge", log_every_n_steps=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=1.0)
    trainer = make_trainer(
        callbacks=[probe, callback, checkpoint, stopper],
        enable_checkpointing=True,
        precision="bf16-mixed",
        accumulate_grad_batches=2,
        max_steps=-1,
        max_epochs=10,
        limit_train_batches=4,
        limit_val_batches=2,
    )
    trainer.fit(model, datamodule=TinyData())
    assert stopper.stopped_epoch > 0 and trainer.current_epoch < 10
    assert trainer.global_step == 2 * trainer.current_epoch  # 4 batches / 2 accumulated per step
    last_saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert 0 < last_saved["global_step"] <= trainer.global_step and checkpoint.best_model_path
    # logging every step: the statistics saved with the checkpoint are those of its last optimizer step
    saved_diagnostics = last_saved["callbacks"]["ftprop"]["FTPropDiagnostics"]
    assert saved_diagnostics["last_logged_step"] == last_saved["global_step"] - 1
    assert saved_diagnostics["logged_steps"] == last_saved["global_step"]
    saved = torch.load(checkpoint.best_model_path, weights_only=False)
    assert saved["callbacks"]["ftprop"]["layers"] == ["net.2", "net.4"]
    # the last logged step gathered both accumulated micro-batches of bf16 pre-activations
    last = max(probe.records)
    records = probe.records[last]
    assert {z.shape[0] for _, z, _ in records} == {8} and len(records) == 4
    expected = reference_stats(reference_counts(records))
    assert callback.latest.keys() == expected.keys()
    for key, value in expected.items():
        assert callback.latest[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize(
    "arch, kwargs, expected_layers", [("resnet18", {}, 9), ("mobilenet_v2", {"width_mult": 0.25}, 35)]
)
def test_torchvision_models_train_with_threshold_units(arch, kwargs, expected_layers):
    import torchvision
    from lightning.pytorch import LightningModule

    class VisionModule(LightningModule):
        def __init__(self):
            super().__init__()
            self.model = getattr(torchvision.models, arch)(weights=None, num_classes=10, **kwargs)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    module = VisionModule()
    before = [p.detach().clone() for p in module.parameters()]
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    callback = ftp.FTPropCallback("sign", "sste", log_every_n_steps=1)
    make_trainer(callbacks=[callback], max_steps=2).fit(module, DataLoader(data, batch_size=4))
    assert len(callback.layers) == expected_layers
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in module.modules())
    first_conv = next(module.parameters())
    assert not torch.equal(first_conv, before[0])  # gradients flowed through every threshold layer
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(k.endswith("/mismatch") for k in callback.latest)


class TinyTransformer(LightningTransformer):
    """Lightning's transformer demo on a tiny vocabulary, with no WikiText2 download."""

    def prepare_data(self):
        pass


def _token_loader():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (8, 2, 6), generator=g)
    return DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=4)


def test_lightning_transformer_demo_trains_with_threshold_units():
    torch.manual_seed(0)
    demo = TinyTransformer(vocab_size=32)
    # the demo's layers hold F.relu as a function: the callback swaps a unit into each of them
    layers = [*demo.model.transformer.encoder.layers, *demo.model.transformer.decoder.layers]
    assert all(layer.activation is torch.nn.functional.relu for layer in layers)
    callback = ftp.FTPropCallback("sign", "soft_hinge", log_every_n_steps=1)
    before = demo.model.decoder.weight.detach().clone()
    make_trainer(callbacks=[callback], max_steps=2).fit(demo, _token_loader())
    assert len(callback.layers) == len(layers) == 4
    assert all(isinstance(layer.activation, ftp.Sign) for layer in layers)
    assert not torch.equal(before, demo.model.decoder.weight)
    # torch's fused encoder fast path (eval, no grad) must not compute ReLU in place of the units
    demo.eval()
    inputs, target = next(iter(_token_loader()))
    with torch.no_grad():
        fast = demo(inputs, target)
    slow = demo(inputs, target)
    torch.testing.assert_close(fast, slow.detach())
    ftp.revert(demo)
    assert all(layer.activation is torch.nn.functional.relu for layer in layers)
    assert demo.model.transformer.encoder.layers[0].activation_relu_or_gelu == 1
