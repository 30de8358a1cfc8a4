"""ImageClassifier: construction errors, the paper's optimisers and schedule, training and checkpoints."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_ftprop.convert import threshold_units
from lightning_ftprop.data import EmbeddedFashionMNISTDataModule
from lightning_ftprop.module import ImageClassifier
from lightning_ftprop.nn import QReLU, Sign


def test_unknown_arch_error_lists_valid_architectures():
    with pytest.raises(ValueError, match=r"unknown arch 'vgg16'.*convnet4, convnet8, alexnet_dorefa, resnet18"):
        ImageClassifier("vgg16")


def test_unknown_activation_error_names_the_value():
    with pytest.raises(ValueError, match=r"unknown activation 'tanh'.*sign"):
        ImageClassifier("convnet4", activation="tanh")


@pytest.mark.parametrize("milestones", [[1], [5, 3], [4, 4]])
def test_milestones_must_be_increasing_epochs_after_the_first(milestones):
    with pytest.raises(ValueError, match="milestones"):
        ImageClassifier(milestones=milestones)


def test_qrelu_thresholds_reach_the_units_and_sign_refuses_them():
    qrelu = ImageClassifier("convnet4", activation="qrelu", rule="sste", in_channels=1, thresholds=5)
    units = [m for m in qrelu.modules() if isinstance(m, QReLU)]
    assert len(units) == 3 and all(u.thresholds == 5 and u.rule.name == "sste" for u in units)
    assert qrelu.hparams.ftprop == {"activation": "qrelu", "rule": "sste", "unit_kwargs": {"thresholds": 5}}
    with pytest.raises(TypeError, match="Sign does not take thresholds"):
        ImageClassifier("convnet4", activation="sign", rule="soft_hinge", in_channels=1, thresholds=5)


def test_optimisers_use_coupled_weight_decay_on_every_parameter():
    adam = ImageClassifier("convnet8", optimizer="adam", lr=1e-3, weight_decay=5e-4).configure_optimizers()["optimizer"]
    assert isinstance(adam, torch.optim.Adam) and not isinstance(adam, torch.optim.AdamW)
    model = ImageClassifier("convnet8", optimizer="sgd", lr=0.1, weight_decay=1e-4)
    sgd = model.configure_optimizers()["optimizer"]
    assert isinstance(sgd, torch.optim.SGD)
    (group,) = sgd.param_groups
    assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    assert len(group["params"]) == len(list(model.parameters()))  # BN and biases included


class _RecordLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lr_is_decayed_at_the_start_of_each_1_based_milestone_epoch(tmp_path):
    model = ImageClassifier("convnet4", activation="sign", in_channels=1, lr=1e-3, milestones=[3, 4])
    record = _RecordLR()
    trainer = pl.Trainer(
        max_epochs=4,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=EmbeddedFashionMNISTDataModule(batch_size=8))
    assert record.lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])


def test_training_logs_metrics_and_checkpoint_rebuilds_the_threshold_network(tmp_path):
    pl.seed_everything(0)
    model = ImageClassifier("convnet4", activation="qrelu", rule="soft_hinge", in_channels=1, lr=1e-3)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=20,
        limit_val_batches=2,
        limit_test_batches=2,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = EmbeddedFashionMNISTDataModule(batch_size=32)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert float(metrics["val/acc"]) > 0.2  # 20 steps lift a 10-class problem well above chance (0.1)
    trainer.test(model, datamodule=data, verbose=False)
    assert 0.0 <= float(trainer.callback_metrics["test/acc"]) <= 1.0
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ImageClassifier.load_from_checkpoint(path)
    assert [type(m) for m in loaded.net] == [type(m) for m in model.net]
    assert loaded.hparams.activation == "qrelu"
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    loaded.eval()
    assert torch.equal(loaded(x), model(x))


def _fit_few_steps(model, tmp_path, steps=3):
    trainer = pl.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=EmbeddedFashionMNISTDataModule(batch_size=16))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_sign_classifier_reloads_from_its_checkpoint_as_sign_units_with_identical_outputs(tmp_path):
    pl.seed_everything(0)
    model = ImageClassifier(arch="convnet4", activation="sign", rule="sste", num_classes=10, in_channels=1, lr=1e-3)
    path = _fit_few_steps(model, tmp_path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["callbacks"]["ftprop"]["layers"] == ["net.2", "net.5", "net.8"]
    assert (
        checkpoint["callbacks"]["ftprop"]["spec"]["activation"] == "sign"
        and checkpoint["callbacks"]["ftprop"]["spec"]["rule"] == "sste"
    )
    loaded = ImageClassifier.load_from_checkpoint(path)
    units = [m for m in loaded.net if isinstance(m, Sign)]
    assert len(units) == 3 and all(u.rule.name == "sste" for u in units)
    x = torch.randn(8, 1, 28, 28)
    model.eval()
    loaded.eval()
    assert torch.equal(loaded(x), model(x))


def test_threshold_units_leave_the_random_init_of_the_float_network_unchanged():
    def weights(**kwargs):
        torch.manual_seed(7)
        return ImageClassifier("convnet8", in_channels=1, **kwargs).net.state_dict()

    relu = weights(activation="relu")
    for kwargs in (
        dict(activation="sign"),
        dict(activation="qrelu", thresholds=5),
        dict(ftprop={"activation": "step"}),
    ):
        other = weights(**kwargs)
        assert list(other) == list(relu) and all(torch.equal(other[k], relu[k]) for k in relu), kwargs


def test_shorthands_and_ftprop_dict_build_the_same_spec():
    short = ImageClassifier("convnet4", activation="qrelu", rule="sste", thresholds=5, mode="per_threshold")
    spelled = ImageClassifier(
        "convnet4",
        ftprop={"activation": "qrelu", "rule": "sste", "unit_kwargs": {"thresholds": 5, "mode": "per_threshold"}},
    )
    assert short.ftprop_spec == spelled.ftprop_spec and short.hparams.activation == spelled.hparams.activation
    merged = ImageClassifier("convnet4", activation="sign", ftprop={"exclude": "net.8", "log_every_n_steps": 1})
    assert [name for name, _ in threshold_units(merged)] == ["net.2", "net.5"]  # net.8 stays a ReLU
    assert merged.hparams.ftprop["log_every_n_steps"] == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(activation="qrelu", ftprop={"activation": "sign"}), ValueError, "activation='qrelu' disagrees"),
        (dict(rule="sste", ftprop={"rule": "ste"}), ValueError, "rule='sste' disagrees with ftprop's rule='ste'"),
        (dict(activation="relu", thresholds=5), ValueError, "float baseline.*thresholds=5"),
        (dict(ftprop={"activation": "relu"}), ValueError, "ftprop's activation must be a threshold unit"),
        (dict(ftprop="sign"), TypeError, "ftprop must be a dict"),
        (dict(ftprop={"rule": "magic"}), ValueError, "unknown rule 'magic'"),
    ],
)
def test_conflicting_or_bad_unit_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageClassifier("convnet4", **kwargs)
