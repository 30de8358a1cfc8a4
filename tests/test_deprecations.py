"""Renamed public names keep working for one release and warn, naming the new name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import functional as F
from lightning_ftprop.spec import make_spec, spec_differences


@pytest.mark.parametrize(
    "call, new_name, expected",
    [
        (lambda: ftp.nn.check_activation_name("qrelu"), "lightning_ftprop.nn.check_unit_name", "qrelu"),
        (lambda: F.check_steps(5), "lightning_ftprop.functional.check_thresholds", 5),
        (
            lambda: ftp.models.activation.check_activation("relu"),
            "lightning_ftprop.models.activation.check_network_activation",
            "relu",
        ),
        (
            lambda: type(ftp.models.float_activation("saturated_relu")).__name__,
            "lightning_ftprop.models.activation.make_float_activation",
            "Hardtanh",
        ),
        (lambda: ftp.QReLU(steps=5).thresholds, r"QReLU\(thresholds=...\)", 5),
        (lambda: ftp.QReLU(thresholds=5).steps, "QReLU.thresholds", 5),
        (lambda: ftp.make_unit("qrelu", steps=4).thresholds, r"QReLU\(thresholds=...\)", 4),
        (lambda: F.qrelu(torch.tensor([0.6]), steps=3).item(), r"qrelu\(thresholds=...\)", pytest.approx(2 / 3)),
        (lambda: ftp.Sign(saved="exact").saved, "saved='input'", "input"),
        (lambda: make_spec("qrelu", unit_kwargs={"steps": 5})["unit_kwargs"], "thresholds", {"thresholds": 5}),
        (
            lambda: make_spec(mapping={"Tanh": ("qrelu", {"steps": 5})})["mapping"],
            "thresholds",
            {"Tanh": ["qrelu", {"thresholds": 5}]},
        ),
    ],
)
def test_old_name_warns_naming_the_new_one_and_still_works(call, new_name, expected):
    with pytest.warns(
        DeprecationWarning, match=f"deprecated and will be removed in the next release; use .*{new_name}"
    ):
        assert call() == expected


def test_convert_with_the_old_qrelu_argument_builds_the_same_units():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.warns(DeprecationWarning, match="use QReLU\\(thresholds=...\\)"):
        ftp.convert(model, "qrelu", steps=5)
    assert model[1].spec() == ftp.QReLU(thresholds=5).spec()


def test_a_spec_stored_with_old_names_resumes_into_the_renamed_callback():
    old = {"activation": "qrelu", "rule": "sste", "weighted": True, "include": None, "exclude": None}
    old.update(mapping=None, unit_kwargs={"steps": 5, "saved": "exact"}, memory="packed")
    callback = ftp.FTPropCallback("qrelu", "sste", unit_kwargs={"thresholds": 5, "saved": "input"})
    assert spec_differences(old, callback.spec) == []
    callback.load_state_dict({"spec": old})  # no error: the stored spec means the same units
    with pytest.raises(ValueError, match="unit_kwargs"):
        ftp.FTPropCallback("qrelu", "sste", unit_kwargs={"thresholds": 3}).load_state_dict({"spec": old})


def test_image_classifier_takes_the_old_shorthand_and_records_the_new_name():
    with pytest.warns(DeprecationWarning, match=r"ImageClassifier\(thresholds=...\)"):
        model = ftp.ImageClassifier("convnet4", activation="qrelu", in_channels=1, steps=5)
    assert model.hparams.ftprop["unit_kwargs"] == {"thresholds": 5}
    with pytest.raises(TypeError, match="give thresholds only"), pytest.warns(DeprecationWarning):
        ftp.ImageClassifier("convnet4", activation="qrelu", thresholds=3, steps=5)


def test_folded_threshold_no_longer_needs_the_count():
    from lightning_ftprop.export import FoldedThreshold

    threshold, direction = torch.zeros(3, 2), torch.ones(3, 2)
    with pytest.warns(DeprecationWarning, match="FoldedThreshold\\(activation, threshold, direction\\)"):
        old = FoldedThreshold("qrelu", threshold, direction, 3)
    assert old.thresholds == FoldedThreshold("qrelu", threshold, direction).thresholds == 3


def test_load_checkpoint_model_moved_out_of_the_cli(tmp_path):
    import lightning_ftprop.cli as cli

    with pytest.warns(DeprecationWarning, match="use lightning_ftprop.checkpoint.load_checkpoint_model"):
        with pytest.raises(ValueError, match="does not exist"):
            cli.load_checkpoint_model(str(tmp_path / "missing.ckpt"))
