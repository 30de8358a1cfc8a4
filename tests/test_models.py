"""The paper's networks: shapes, parameter counts and activations."""

import pytest
import torch
import torchvision
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop.models import NETWORK_ACTIVATION_NAMES, get_model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_convnet4_has_the_papers_parameter_count():
    assert n_params(get_model("convnet4")) == 4_259_274


@pytest.mark.parametrize(
    "name, shape, kwargs",
    [
        ("convnet4", (2, 3, 32, 32), {}),
        ("convnet4", (2, 1, 28, 28), dict(in_channels=1)),
        ("convnet8", (2, 3, 32, 32), {}),
        ("convnet8", (2, 1, 28, 28), dict(in_channels=1)),
        ("alexnet_dorefa", (2, 3, 224, 224), dict(num_classes=7)),
        ("resnet18", (2, 3, 96, 96), dict(num_classes=7)),
    ],
)
@pytest.mark.parametrize("activation", NETWORK_ACTIVATION_NAMES)
def test_models_map_images_to_logits_for_every_activation(name, shape, kwargs, activation):
    model = get_model(name, activation=activation, **kwargs)
    out = model(torch.randn(shape))
    assert out.shape == (2, kwargs.get("num_classes", 10))
    (out * torch.randn(out.shape)).sum().backward()  # not out.sum(): BN cancels a batch-constant gradient
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0  # targets reach the first layer


def test_resnet18_keeps_torchvision_layout_and_parameter_count():
    ours = get_model("resnet18", activation="qrelu", thresholds=5)
    reference = torchvision.models.resnet18()
    assert n_params(ours) == n_params(reference)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    units = ftp.threshold_units(ours)
    assert len(units) == 9 and all(isinstance(u, ftp.QReLU) and u.thresholds == 5 for _, u in units)


def test_alexnet_dorefa_layout():
    model = get_model("alexnet_dorefa", activation="sign")
    assert isinstance(model[0], nn.Conv2d) and model[0].kernel_size == (12, 12) and isinstance(model[1], ftp.Sign)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model) == 2
    assert all(m.eps == 1e-4 for m in model if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)))
    assert len(ftp.threshold_units(model)) == 7


def test_saturated_relu_is_clipped_to_unit_interval():
    act = get_model("convnet4", activation="saturated_relu")[2]
    assert torch.equal(act(torch.tensor([-1.0, 0.5, 2.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_unknown_model_or_activation_is_an_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*convnet4"):
        get_model("vgg")
    with pytest.raises(ValueError, match="unknown activation 'binary'.*saturated_relu"):
        get_model("convnet4", activation="binary")
