"""lightning_ftprop: train hard-threshold networks with feasible target propagation in Lightning.

>>> import torch
>>> from torch import nn
>>> import lightning_ftprop as ftp
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
>>> ftp.convert(model, "sign", "soft_hinge")  # swap activations for threshold units
['1']
>>> print(ftp.summary(model, torch.zeros(1, 8)))
name  activation  levels (bits)  rule        elements/sample  inference bits/sample (as float32)  training keeps (packed)
1     sign        2 (1)          soft_hinge  16               16 (512)                            z (float32)
total: 1 threshold layers, 16 elements/sample = 0.0 KB at their bit widths (0.1 KB as float32)
float state in training (memory='packed'): 1 unit: 1 (z comes from a matmul (AddmmBackward0); memory='recompute' rebuilds it)
>>> ftp.revert(model)  # the original ReLU is back
['1']
>>> model[1]
ReLU()

Data flows one way: (rules, kinds) -> functional -> nn -> convert -> spec -> parts -> (callback, mixin).

``import lightning_ftprop`` loads only torch and twelve core modules: rules, kinds, functional, nn, memory,
recognise, convert, convert_args, summary, unit_state, compiled and torch_private. The Lightning pieces (``FTPropCallback``, ``FTPropMixin``,
``FTPropDiagnostics``, ``FabricFTProp``, ``ImageClassifier``) and the ``models``/``data`` subpackages load on first
use, so plain-PyTorch users never pay for Lightning, torchvision or torchmetrics.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_ftprop import functional, kinds, memory, rules  # noqa: F401
from lightning_ftprop.convert import UnswappedActivationWarning, convert, float_activations, revert, threshold_units
from lightning_ftprop.kinds import UnitKind, register_kind
from lightning_ftprop.nn import UNIT_CLASSES, QReLU, Sign, Step, ThresholdUnit, make_unit
from lightning_ftprop.recognise import match_activation, register_activation, registered_activations
from lightning_ftprop.rules import DEFAULT_RULE, Rule, available_rules, get_rule, register_rule
from lightning_ftprop.summary import summary

__version__ = "0.1.0"

#: Attributes loaded on first use: name -> the module that holds it (a module name alone: the module itself).
_LAZY = {
    "FTPropCallback": "lightning_ftprop.callback",
    "FTPropDiagnostics": "lightning_ftprop.diagnostics",
    "FabricFTProp": "lightning_ftprop.fabric",
    "FTPropMixin": "lightning_ftprop.mixin",
    "ImageClassifier": "lightning_ftprop.module",
    "models": "lightning_ftprop.models",
    "data": "lightning_ftprop.data",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lightning_ftprop' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_RULE",
    "QReLU",
    "Rule",
    "Sign",
    "Step",
    "ThresholdUnit",
    "UNIT_CLASSES",
    "UnitKind",
    "register_kind",
    "kinds",
    "available_rules",
    "convert",
    "float_activations",
    "match_activation",
    "register_activation",
    "registered_activations",
    "UnswappedActivationWarning",
    "functional",
    "get_rule",
    "make_unit",
    "memory",
    "register_rule",
    "revert",
    "rules",
    "summary",
    "threshold_units",
    "FTPropCallback",
    "FTPropDiagnostics",
    "FabricFTProp",
    "FTPropMixin",
    "ImageClassifier",
]
