"""The paper's networks, by name.

    from lightning_ftprop.models import get_model
    net = get_model("convnet4", activation="sign", rule="soft_hinge", num_classes=10, in_channels=1)

``activation`` is one of :data:`NETWORK_ACTIVATION_NAMES`: ``relu``, ``saturated_relu``, ``sign``, ``step``,
``qrelu``. Every network is built as a float network and its threshold units come from a spec, through
:func:`lightning_ftprop.convert` (see :mod:`.activation`); extra keywords (``thresholds=5``,
``mode="per_threshold"``, ``weighted=False``) go to the threshold units.
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from lightning_ftprop.models.activation import (
    FLOAT_ACTIVATION_NAMES,
    NETWORK_ACTIVATION_NAMES,
    make_float_activation,
    paper_network,
    unit_spec,
)
from lightning_ftprop.models.alexnet import alexnet_dorefa
from lightning_ftprop.models.convnets import convnet4, convnet8
from lightning_ftprop.models.resnet import resnet18

#: Network name -> its builder; :func:`get_model` looks names up here.
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "convnet4": convnet4,
    "convnet8": convnet8,
    "alexnet_dorefa": alexnet_dorefa,
    "resnet18": resnet18,
}


def get_model(name: str, **kwargs) -> nn.Module:
    """Build a network from :data:`MODELS` by name.

    Example:
        >>> import torch
        >>> sorted(MODELS)
        ['alexnet_dorefa', 'convnet4', 'convnet8', 'resnet18']
        >>> net = get_model("convnet4", activation="sign", rule="sste", in_channels=1)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "FLOAT_ACTIVATION_NAMES",
    "NETWORK_ACTIVATION_NAMES",
    "make_float_activation",
    "paper_network",
    "unit_spec",
    "alexnet_dorefa",
    "convnet4",
    "convnet8",
    "get_model",
    "resnet18",
]
