"""Threshold units as ``nn.Module``: :class:`Sign`, :class:`Step` and :class:`QReLU`.

Each unit wraps a function of :mod:`lightning_ftprop.functional`; the formulas are there. All units
take the same keyword arguments (``rule``, ``weighted``, ``inplace``) so one can replace another, and
all have no parameters and no buffers. ``levels`` and ``bits`` describe the output alphabet::

    unit                    output values               levels   bits
    Sign()                  {-1, +1}                    2        1
    Step()                  {0, 1}                      2        1
    QReLU(thresholds=3)     {0, 1/3, 2/3, 1}            4        2
    QReLU(thresholds=5)     {0, .2, .4, .6, .8, 1}      6        3

``levels`` always means the number of output values; ``thresholds`` (qrelu's) the number of
thresholds, at ``k / (thresholds - 1)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Dict, Type, Union

from torch import Tensor, nn

from lightning_ftprop import functional as F
from lightning_ftprop.rules import DEFAULT_RULE, Rule, get_rule

__all__ = [
    "ThresholdUnit",
    "Sign",
    "Step",
    "QReLU",
    "UNIT_CLASSES",
    "make_unit",
    "check_unit_name",
]


class ThresholdUnit(nn.Module):
    """Base class of the threshold units; subclasses define ``forward`` and ``levels``.

    Args:
        rule: a registered rule name (see :func:`lightning_ftprop.rules.available_rules`) or a
            :class:`~lightning_ftprop.rules.Rule`.
        weighted: weight each unit's loss by ``|g|`` (the paper's default). ``False`` uses only the
            sign of ``g``, scaled by ``1/batch``.
        inplace: accepted for drop-in compatibility with ``nn.ReLU(inplace=True)``; ignored.
        saved: what the backward keeps: ``"input"`` (default: ``z`` itself), or the compact ``"bf16"`` / ``"uint8"``
            forms of the surrogate (see :mod:`lightning_ftprop.functional`).

    >>> unit = Sign("sste", saved="uint8")
    >>> unit.levels, unit.bits, unit.spec()
    (2, 1, {'activation': 'sign', 'rule': 'sste', 'weighted': True, 'saved': 'uint8'})
    """

    activation: str = ""
    levels: int = 2

    def __init__(
        self, rule: Union[str, Rule] = DEFAULT_RULE, weighted: bool = True, inplace: bool = False, saved: str = "input"
    ):
        super().__init__()
        if not isinstance(weighted, bool):
            raise TypeError(f"weighted must be True or False, got {weighted!r}")
        self.rule = get_rule(rule)
        self.weighted = weighted
        self.saved = F.check_saved(saved)

    @property
    def bits(self) -> int:
        """Bits needed to store one output value."""
        return max(1, math.ceil(math.log2(self.levels)))

    def spec(self) -> Dict[str, object]:
        """The keyword arguments that rebuild this unit with :func:`make_unit`."""
        spec = {"activation": self.activation, "rule": self.rule.name, "weighted": self.weighted}
        return spec if self.saved == "input" else {**spec, "saved": self.saved}

    def extra_repr(self) -> str:
        saved = "" if self.saved == "input" else f", saved={self.saved!r}"
        return f"rule={self.rule.name!r}, weighted={self.weighted}{saved}"


class Sign(ThresholdUnit):
    """``h = sign(z)`` in {-1, +1}; backward ``|g| * dL/dz(z, sign(-g))``.

    >>> import torch
    >>> Sign()(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([-1., -1.,  1.])
    """

    activation = "sign"

    def forward(self, z: Tensor) -> Tensor:
        return F.sign(z, self.rule, self.weighted, self.saved)


class Step(ThresholdUnit):
    """``h = 1[z > 0]`` in {0, 1}; backward ``|g| * dL/dz(z, sign(-g))``.

    >>> import torch
    >>> Step()(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([0., 0., 1.])
    """

    activation = "step"

    def forward(self, z: Tensor) -> Tensor:
        return F.step(z, self.rule, self.weighted, self.saved)


class QReLU(ThresholdUnit):
    """``h = clip(ceil((n-1) z), 0, n) / n`` with ``n = thresholds``: ``n + 1`` levels.

    Args:
        thresholds: the number of thresholds, at ``k / (n - 1)``. 3 is the paper's 2-bit qReLU;
            the ResNet-18 runs used 5.
        mode: ``"single"`` (one rule centred at 0.5, the paper's code) or ``"per_threshold"``.

    >>> QReLU(thresholds=5)
    QReLU(thresholds=5, mode='single', rule='soft_hinge', weighted=True)
    >>> QReLU(thresholds=5).levels, QReLU(thresholds=5).bits
    (6, 3)
    """

    activation = "qrelu"

    def __init__(
        self,
        rule: Union[str, Rule] = DEFAULT_RULE,
        weighted: bool = True,
        inplace: bool = False,
        saved: str = "input",
        thresholds: int = 3,
        mode: str = "single",
    ):
        super().__init__(rule, weighted, inplace, saved)
        self.thresholds = F.check_thresholds(thresholds)
        self.mode = F.check_mode(mode)

    @property
    def levels(self) -> int:  # type: ignore[override]
        return self.thresholds + 1

    def spec(self) -> Dict[str, object]:
        return {**super().spec(), "thresholds": self.thresholds, "mode": self.mode}

    def extra_repr(self) -> str:
        return f"thresholds={self.thresholds}, mode={self.mode!r}, {super().extra_repr()}"

    def forward(self, z: Tensor) -> Tensor:
        return F.qrelu(z, self.rule, self.weighted, self.thresholds, self.mode, self.saved)


#: Threshold unit name -> its class: the ``activation`` names :func:`make_unit` and ``convert`` accept.
UNIT_CLASSES: Dict[str, Type[ThresholdUnit]] = {"sign": Sign, "step": Step, "qrelu": QReLU}


def make_unit(activation: str = "sign", rule: Union[str, Rule] = DEFAULT_RULE, **kwargs) -> ThresholdUnit:
    """Build a threshold unit by name: ``make_unit("qrelu", "sste", thresholds=5)``.

    This is where unit arguments are checked, for every caller (convert, the spec, the callback).

    Raises:
        ValueError: an unknown activation or rule (the message lists the valid names), or a bad
            unit argument value.
        TypeError: a keyword argument the unit does not take, or an argument of the wrong type.

    >>> make_unit("qrelu", "sste", thresholds=5, mode="per_threshold")
    QReLU(thresholds=5, mode='per_threshold', rule='sste', weighted=True)
    """
    cls = UNIT_CLASSES[check_unit_name(activation)]
    allowed = [p for p in inspect.signature(cls).parameters if p != "rule"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"{cls.__name__} does not take {', '.join(unknown)}; its arguments are: rule, {', '.join(allowed)}"
        )
    return cls(rule=rule, **kwargs)


def check_unit_name(activation: str) -> str:
    """Validate a threshold unit name (a key of :data:`UNIT_CLASSES`) and return it.

    (Network activation names, which add the float baselines, are checked by
    :func:`lightning_ftprop.models.activation.check_network_activation`.)

    Raises:
        TypeError: ``activation`` is not a string.
        ValueError: an unknown name; the message lists the valid ones.

    >>> check_unit_name("qrelu")
    'qrelu'
    >>> check_unit_name("relu")
    Traceback (most recent call last):
    ValueError: unknown activation 'relu'; valid activations are: sign, step, qrelu
    """
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name, one of {', '.join(UNIT_CLASSES)}; got {activation!r}")
    if activation not in UNIT_CLASSES:
        raise ValueError(f"unknown activation {activation!r}; valid activations are: {', '.join(UNIT_CLASSES)}")
    return activation
