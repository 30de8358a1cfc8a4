"""Frozen units: a forward-only copy of a threshold network, for inference and export.

:func:`freeze` replaces every :class:`~lightning_ftprop.nn.ThresholdUnit` by a plain
module that computes the very same forward as :mod:`lightning_ftprop.functional` (the same code):

    FrozenSign:   h = +1 if z > 0 else -1             (sign(0) = -1)
    FrozenStep:   h =  1 if z > 0 else 0              (step(0) = 0)
    FrozenQReLU:  h = clip(ceil((n - 1) z), 0, n) / n          n = thresholds
    NaN in gives NaN out. There is no backward (inference only).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from lightning_ftprop.functional import qrelu_values, sign_values, step_values
from lightning_ftprop.kinds import QReLUKind, SignKind, StepKind, UnitKind
from lightning_ftprop.nn import ThresholdUnit

__all__ = [
    "FrozenUnit",
    "FrozenSign",
    "FrozenStep",
    "FrozenQReLU",
    "decode_codes",
    "freeze",
    "has_units",
    "thresholds_of",
]

# --- frozen units -----------------------------------------------------------------------------------


def decode_codes(codes: Tensor, a: int, b: int, d: int) -> Tensor:
    """``(a * codes + b) / d``: a kind's output values from its codes (:attr:`~lightning_ftprop.kinds.UnitKind.code_map`).

    >>> decode_codes(torch.tensor([0.0, 1.0]), 2, -1, 1)  # sign
    tensor([-1.,  1.])
    """
    if a != 1:
        codes = codes * a
    if b > 0:
        codes = codes + b
    elif b < 0:
        codes = codes - (-b)
    return codes if d == 1 else codes / d


class FrozenUnit(nn.Module):
    """A forward-only unit of any :class:`~lightning_ftprop.kinds.UnitKind`, as plain data (scriptable)::

        code = sum_k 1[z > theta_k]          h = (a * code + b) / d          NaN in gives NaN out

    :func:`freeze` uses it for kinds without a frozen class of their own; ``activation``, ``levels``,
    ``thetas`` (the thresholds as floats) and ``code_map`` ``(a, b, d)`` are read by the folding.

    >>> from lightning_ftprop.kinds import StepKind
    >>> FrozenUnit(StepKind())(torch.tensor([-1.0, 0.0, 0.5]))
    tensor([0., 0., 1.])
    """

    def __init__(self, kind: UnitKind):
        super().__init__()
        self.activation: str = kind.name
        self.levels: int = kind.levels
        self.thetas: List[float] = [float(theta) for theta in kind.thetas]
        self.code_map: Tuple[int, int, int] = kind.code_map

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, thetas={self.thetas}"

    def forward(self, z: Tensor) -> Tensor:
        codes = torch.zeros_like(z)
        for theta in self.thetas:
            codes = codes + torch.clamp(z - theta, 0, 1).ceil()
        a, b, d = self.code_map
        return decode_codes(codes, a, b, d)


class FrozenSign(FrozenUnit):
    """``h = +1 if z > 0 else -1``; forward only.

    >>> FrozenSign()(torch.tensor([-1.0, 0.0, 0.5]))
    tensor([-1., -1.,  1.])
    """

    def __init__(self):
        super().__init__(SignKind())

    def extra_repr(self) -> str:
        return ""

    def forward(self, z: Tensor) -> Tensor:
        return sign_values(z)


class FrozenStep(FrozenUnit):
    """``h = 1 if z > 0 else 0``; forward only.

    >>> FrozenStep()(torch.tensor([-1.0, 0.0, 0.5]))
    tensor([0., 0., 1.])
    """

    def __init__(self):
        super().__init__(StepKind())

    def extra_repr(self) -> str:
        return ""

    def forward(self, z: Tensor) -> Tensor:
        return step_values(z)


class FrozenQReLU(FrozenUnit):
    """``h = clip(ceil((n - 1) z), 0, n) / n`` with ``n = thresholds``; forward only.

    >>> FrozenQReLU(thresholds=3)(torch.tensor([-1.0, 0.2, 0.6, 2.0]))
    tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """

    def __init__(self, thresholds: int = 3):
        super().__init__(QReLUKind(int(thresholds)))
        self.thresholds = int(thresholds)

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}"

    def forward(self, z: Tensor) -> Tensor:
        return qrelu_values(z, self.thresholds)


def _frozen(unit: ThresholdUnit) -> FrozenUnit:
    """The frozen unit of ``unit``'s kind: the kind's own class for sign, step and qrelu (their forwards' exact
    arithmetic), else the data-only :class:`FrozenUnit`."""
    kind = unit.kind
    if isinstance(kind, QReLUKind):
        return FrozenQReLU(kind.n)
    own = {SignKind: FrozenSign, StepKind: FrozenStep}.get(type(kind))
    return own() if own is not None else FrozenUnit(kind)


def has_units(model: nn.Module) -> bool:
    """Whether ``model`` holds a threshold unit, trainable or frozen.

    >>> has_units(nn.Sequential(nn.ReLU())), has_units(nn.Sequential(FrozenSign()))
    (False, True)
    """
    return any(isinstance(m, (ThresholdUnit, FrozenUnit)) for m in model.modules())


def freeze(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` (eval mode, no gradients) with every threshold unit frozen.

    The copy works with ``torch.export.export`` and ``torch.jit.script`` (where the model itself does)
    and gives outputs identical to ``model.eval()``. A unit shared by several parents stays shared.
    The original model is not changed.

    >>> from lightning_ftprop.nn import Sign
    >>> freeze(nn.Sequential(nn.Linear(2, 2), Sign()))[1]
    FrozenSign()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze() expects an nn.Module, got {type(model).__name__}")
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    replacement: Dict[int, FrozenUnit] = {}
    for _, parent in list(frozen.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):
            if isinstance(child, ThresholdUnit):
                if id(child) not in replacement:
                    replacement[id(child)] = _frozen(child)
                setattr(parent, name, replacement[id(child)])
    return frozen


def thresholds_of(unit: FrozenUnit) -> List[float]:
    """The threshold positions ``theta_k`` of a frozen unit: ``[0.0]`` for sign and step, ``k / (n - 1)`` for qrelu.

    >>> thresholds_of(FrozenQReLU(3))
    [0.0, 0.5, 1.0]
    """
    return list(unit.thetas)
