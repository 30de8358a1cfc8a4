"""The activation factory the paper's networks are built with.

activation_layer("relu")                 -> nn.ReLU()
activation_layer("saturated_relu")       -> nn.Hardtanh(0, 1)      min(max(z, 0), 1)
activation_layer("sign", "sste")         -> Sign(rule="sste")
activation_layer("qrelu", steps=5)       -> QReLU(steps=5)
"""

from __future__ import annotations

from typing import Tuple, Union

from torch import nn

from lightning_ftprop.nn import ACTIVATIONS, make_unit
from lightning_ftprop.rules import DEFAULT_RULE, Rule

#: The ``activation=`` values the networks accept: two full-precision baselines and the threshold units.
MODEL_ACTIVATIONS: Tuple[str, ...] = ("relu", "saturated_relu", *ACTIVATIONS)


def check_activation(activation: str) -> str:
    if activation not in MODEL_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid activations are: {', '.join(MODEL_ACTIVATIONS)}")
    return activation


def activation_layer(activation: str = "relu", rule: Union[str, Rule] = DEFAULT_RULE, **unit_kwargs) -> nn.Module:
    """A fresh activation module. ``rule`` and ``unit_kwargs`` matter only for threshold units."""
    check_activation(activation)
    if activation == "relu":
        return nn.ReLU(inplace=True)
    if activation == "saturated_relu":
        return nn.Hardtanh(0.0, 1.0, inplace=True)
    return make_unit(activation, rule, **unit_kwargs)
