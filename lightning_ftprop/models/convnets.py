"""The paper's CIFAR-10 networks: the 4-layer convnet and the 8-layer (DoReFa SVHN) convnet.

Every hidden activation is ``act``: the network is built with ReLUs (``Hardtanh(0, 1)`` for
``saturated_relu``) and a threshold ``activation`` is swapped in from a spec (see
:mod:`lightning_ftprop.models.activation`). The input and the logits stay real-valued, and all weights
are full precision. ``convnet4(activation="sign", rule="soft_hinge", in_channels=1, thresholds=...)``.

convnet4 (no BN, biases on; pooling before the activation)::

    conv 5x5 32 pad 3 -> maxpool 2 -> act -> conv 5x5 64 pad 2 -> maxpool 2 -> act
    -> flatten -> linear 1024 -> act -> linear num_classes

convnet8 (BN eps 1e-4, conv bias off where BN follows)::

    conv0 5x5 48 pad 2 (bias) -> maxpool 2 -> act
    conv1 3x3 64 pad 1 -> BN -> act
    conv2 3x3 64 pad 1 -> BN -> maxpool 2 -> act
    conv3 3x3 128 pad 0 -> BN -> act
    conv4 3x3 128 pad 1 -> BN -> act
    conv5 3x3 128 pad 0 -> BN -> act
    dropout2d 0.5 -> conv6 kxk 512 (k = remaining map size: 4 on 32x32) -> BN -> act
    flatten -> linear num_classes
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from lightning_ftprop.models.activation import paper_network

__all__ = ["convnet4", "convnet8"]


def _default_size(in_channels: int, input_size: Optional[int]) -> int:
    return input_size if input_size is not None else (28 if in_channels == 1 else 32)


@paper_network
def convnet4(
    act: Callable[[], nn.Module], num_classes: int = 10, in_channels: int = 3, input_size: Optional[int] = None
) -> nn.Sequential:
    """The 4-layer convnet (4,259,274 parameters on CIFAR-10).

    ``input_size`` is the image side; it defaults to 28 for one channel and 32 otherwise.

    Example:
        >>> import torch
        >>> from lightning_ftprop import threshold_units
        >>> net = convnet4("sign", "soft_hinge")
        >>> sum(p.numel() for p in net.parameters()), len(threshold_units(net))
        (4259274, 3)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    side = ((_default_size(in_channels, input_size) + 2) // 2) // 2  # conv pad 3 grows the map by 2, two 2x2 pools
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=3),
        nn.MaxPool2d(2),
        act(),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.MaxPool2d(2),
        act(),
        nn.Flatten(),
        nn.Linear(64 * side * side, 1024),
        act(),
        nn.Linear(1024, num_classes),
    )


def conv_bn(cin: int, cout: int, k: int, pad: int) -> list:
    """``Conv2d`` without bias, then ``BatchNorm2d`` with the reference code's eps 1e-4."""
    return [nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout, eps=1e-4)]


@paper_network
def convnet8(
    act: Callable[[], nn.Module], num_classes: int = 10, in_channels: int = 3, input_size: Optional[int] = None
) -> nn.Sequential:
    """The 8-layer convnet of DoReFa-Net's SVHN experiments, as used by the paper on CIFAR-10.

    Example:
        >>> import torch
        >>> from lightning_ftprop import threshold_units
        >>> net = convnet8("qrelu", "sste", thresholds=3)
        >>> len(threshold_units(net)), net(torch.zeros(2, 3, 32, 32)).shape
        (7, torch.Size([2, 10]))
    """
    last = (_default_size(in_channels, input_size) // 2) // 2 - 4  # two pools, then two unpadded 3x3 convs
    return nn.Sequential(
        nn.Conv2d(in_channels, 48, 5, padding=2),
        nn.MaxPool2d(2),
        act(),
        *conv_bn(48, 64, 3, 1),
        act(),
        *conv_bn(64, 64, 3, 1),
        nn.MaxPool2d(2),
        act(),
        *conv_bn(64, 128, 3, 0),
        act(),
        *conv_bn(128, 128, 3, 1),
        act(),
        *conv_bn(128, 128, 3, 0),
        act(),
        nn.Dropout2d(0.5),
        *conv_bn(128, 512, last, 0),
        act(),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
