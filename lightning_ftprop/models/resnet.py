"""ResNet-18 for ImageNet: torchvision's layout and parameter count, with every ReLU replaced.

Each BasicBlock is ``conv-BN-act-conv-BN, + shortcut, act``, so with ``sign`` the identity shortcuts carry
+-1 values. torchvision already initialises convs with N(0, sqrt(2 / (k^2 C_out))) and BN with
gamma = 1, beta = 0, as the paper's code did. The paper's qReLU ResNet-18 runs used ``steps=5``.
"""

from __future__ import annotations

from typing import Union

import torchvision
from torch import nn

from lightning_ftprop.convert import convert
from lightning_ftprop.models.activation import activation_layer, check_activation
from lightning_ftprop.rules import DEFAULT_RULE, Rule


def resnet18(
    activation: str = "relu",
    rule: Union[str, Rule] = DEFAULT_RULE,
    num_classes: int = 1000,
    in_channels: int = 3,
    **unit_kwargs,
) -> nn.Module:
    """torchvision's ``resnet18`` (random init) with ``activation`` in place of every ReLU."""
    check_activation(activation)
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if activation != "relu":
        convert(net, mapping={nn.ReLU: lambda: activation_layer(activation, rule, **unit_kwargs)})
    return net
