"""lightning_ftprop: train hard-threshold networks with feasible target propagation in Lightning.

    import lightning_ftprop as ftp
    names = ftp.convert(model, "sign", "soft_hinge")   # swap activations for threshold units
    print(ftp.summary(model, example_batch))

Data flows one way: rules -> functional -> nn -> convert -> (callback, mixin).
"""

from lightning_ftprop import functional, memory, models, rules  # noqa: F401
from lightning_ftprop.callback import FTPropCallback
from lightning_ftprop.convert import DEFAULT_ACTIVATIONS, convert, revert, threshold_units
from lightning_ftprop.diagnostics import FTPropDiagnostics
from lightning_ftprop.mixin import FTPropMixin
from lightning_ftprop.module import ImageClassifier
from lightning_ftprop.nn import ACTIVATIONS, QReLU, Sign, Step, ThresholdUnit, make_unit
from lightning_ftprop.rules import Rule, available_rules, get_rule, register_rule
from lightning_ftprop.summary import summary

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ACTIVATIONS",
    "QReLU",
    "Rule",
    "Sign",
    "Step",
    "ThresholdUnit",
    "available_rules",
    "convert",
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
    "FTPropMixin",
    "ImageClassifier",
]
