"""ResNet-18 for ImageNet: torchvision's layout and parameter count, its ReLUs swapped for ``activation``.

Each BasicBlock is ``conv-BN-act-conv-BN, + shortcut, act``, so with ``sign`` the identity shortcuts carry
+-1 values. torchvision already initialises convs with N(0, sqrt(2 / (k^2 C_out))) and BN with
gamma = 1, beta = 0, as the paper's code did. The paper's qReLU ResNet-18 runs used ``thresholds=5``.
"""

from __future__ import annotations

from typing import Callable

import torchvision
from torch import nn

from lightning_ftprop.models.activation import paper_network

__all__ = ["resnet18"]


@paper_network
def resnet18(act: Callable[[], nn.Module], num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's ``resnet18`` (random init), with ``act()`` in place of its ReLUs where it differs.

    Example:
        >>> import torch
        >>> from lightning_ftprop import threshold_units
        >>> net = resnet18("sign", num_classes=10).eval()
        >>> len(threshold_units(net)), net(torch.zeros(1, 3, 64, 64)).shape  # the stem's unit and one per block
        (9, torch.Size([1, 10]))
    """
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    if not isinstance(act(), nn.ReLU):  # saturated_relu: Hardtanh(0, 1) for every ReLU
        for module in list(net.modules()):
            for name, child in list(module.named_children()):  # a BasicBlock calls its one ``relu`` twice
                if isinstance(child, nn.ReLU):
                    setattr(module, name, act())
    return net
