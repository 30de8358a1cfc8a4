"""AlexNet as in DoReFa-Net, the paper's ImageNet AlexNet (224x224 input, BN eps 1e-4, no dropout).

    conv0 12x12/4 96 (bias) -> act                                   54x54
    conv1 5x5 256 pad 2 -> BN -> maxpool 3/2 pad 1 -> act            27x27
    conv2 3x3 384 pad 1 -> BN -> maxpool 3/2 -> act                  13x13
    conv3 3x3 384 pad 1 -> BN -> act
    conv4 3x3 256 pad 1 -> BN -> maxpool 3/2 -> act                   6x6
    fc0 9216 -> 4096 -> BN -> act;  fc1 4096 -> 4096 -> BN -> act;  fc2 4096 -> num_classes (bias)

Biases are off wherever BN follows. The FC batch norms are ``BatchNorm1d``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lightning_ftprop.models.activation import paper_network
from lightning_ftprop.models.convnets import conv_bn

__all__ = ["alexnet_dorefa"]


def fc_bn(cin: int, cout: int) -> list:
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout, eps=1e-4)]


@paper_network
def alexnet_dorefa(act: Callable[[], nn.Module], num_classes: int = 1000, in_channels: int = 3) -> nn.Sequential:
    """The DoReFa AlexNet; every hidden activation is ``act()``.

    Example:
        >>> from lightning_ftprop import threshold_units
        >>> net = alexnet_dorefa("sign", "sste", num_classes=10)
        >>> len(threshold_units(net))
        7
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 96, 12, stride=4),
        act(),
        *conv_bn(96, 256, 5, 2),
        nn.MaxPool2d(3, 2, padding=1),
        act(),
        *conv_bn(256, 384, 3, 1),
        nn.MaxPool2d(3, 2),
        act(),
        *conv_bn(384, 384, 3, 1),
        act(),
        *conv_bn(384, 256, 3, 1),
        nn.MaxPool2d(3, 2),
        act(),
        nn.Flatten(),
        *fc_bn(256 * 6 * 6, 4096),
        act(),
        *fc_bn(4096, 4096),
        act(),
        nn.Linear(4096, num_classes),
    )
