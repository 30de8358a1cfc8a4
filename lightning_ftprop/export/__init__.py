"""Deploy a trained threshold network: freeze it, fold BatchNorm into thresholds, write ONNX.

    frozen = freeze(model)                  # forward-only copy: no autograd.Function, no rule
    folded = fold_thresholds(model)         # conv/linear -> BN -> unit becomes conv/linear -> threshold compare
    export_onnx(model, "model.onnx", torch.randn(1, 3, 32, 32))   # standard ONNX operators only, checked

One job per module: :mod:`~lightning_ftprop.export.frozen` (the forward-only units and :func:`freeze`),
:mod:`~lightning_ftprop.export.fold` (BatchNorm folded into per-channel thresholds) and
:mod:`~lightning_ftprop.export.onnx` (the checked ONNX file). Each module's docstring has the formulas.

>>> import torch
>>> from torch import nn
>>> from lightning_ftprop.nn import Sign
>>> model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), Sign()).eval()
>>> fold_thresholds(model).folded_0  # Linear -> BatchNorm -> Sign became Linear -> per-channel compare
FoldedThreshold(activation='sign', channels=2, thresholds per channel=1)
"""

from lightning_ftprop.export.fold import FoldedThreshold, fold_thresholds, folded_unit
from lightning_ftprop.export.frozen import FrozenQReLU, FrozenSign, FrozenStep, FrozenUnit, freeze
from lightning_ftprop.export.onnx import MIN_OPSET, check_onnx_domains, export_onnx

__all__ = [
    "FrozenUnit",
    "FrozenSign",
    "FrozenStep",
    "FrozenQReLU",
    "FoldedThreshold",
    "folded_unit",
    "freeze",
    "fold_thresholds",
    "export_onnx",
    "check_onnx_domains",
    "MIN_OPSET",
]
