"""Threshold units as ``nn.Module``: :class:`Sign`, :class:`Step`, :class:`QReLU`, and a unit of any kind.

Every unit carries its :class:`~lightning_ftprop.kinds.UnitKind` (``unit.kind``: thresholds, values, forward,
codes, bits) and calls :func:`lightning_ftprop.functional.threshold` with it; the formulas are there. All
units take the same keyword arguments (``rule``, ``weighted``, ``inplace``, ``keep``) so one can replace
another, and all have no parameters and no buffers. ``levels`` and ``bits`` describe the output values::

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
from typing import Any, Dict, Type, Union

from torch import Tensor, nn

from lightning_ftprop import functional as F
from lightning_ftprop.kinds import KINDS, QReLUKind, SignKind, StepKind, UnitKind, get_kind
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
    """A threshold unit of any :class:`~lightning_ftprop.kinds.UnitKind`; :class:`Sign`, :class:`Step` and
    :class:`QReLU` are this with their kinds.

    Args:
        kind: the unit's kind.
        rule: a registered rule name (see :func:`lightning_ftprop.rules.available_rules`) or a
            :class:`~lightning_ftprop.rules.Rule`.
        weighted: weight each unit's loss by ``|g|`` (the paper's default). ``False`` uses only the
            sign of ``g``, scaled by ``1/batch``.
        inplace: accepted for drop-in compatibility with ``nn.ReLU(inplace=True)``; ignored.
        keep: what the backward keeps: ``"input"`` (default: ``z`` itself), or the compact ``"bf16"`` / ``"uint8"``
            forms of the surrogate (see :mod:`lightning_ftprop.functional`).
        mode: the backward mode, ``"single"`` or (with several thresholds) ``"per_threshold"``.

    >>> unit = Sign("sste", keep="uint8")
    >>> unit.kind, unit.levels, unit.bits, unit.config()
    (SignKind(), 2, 1, {'activation': 'sign', 'rule': 'sste', 'weighted': True, 'keep': 'uint8'})
    """

    def __init__(
        self,
        kind: UnitKind,
        rule: Union[str, Rule] = DEFAULT_RULE,
        weighted: bool = True,
        inplace: bool = False,
        keep: str = "input",
        mode: str = "single",
    ):
        super().__init__()
        if not isinstance(kind, UnitKind):
            raise TypeError(f"kind must be a lightning_ftprop.kinds.UnitKind, got {kind!r}")
        if not isinstance(weighted, bool):
            raise TypeError(f"weighted must be True or False, got {weighted!r}")
        self.kind = kind
        self.rule = get_rule(rule)
        self.weighted = weighted
        self.keep = F.check_keep(keep)
        self.mode = F.check_mode(mode, kind)

    @property
    def activation(self) -> str:
        """The kind's name: the activation name this unit is built from."""
        return self.kind.name

    @property
    def levels(self) -> int:
        """The number of output values."""
        return self.kind.levels

    @property
    def bits(self) -> int:
        """Bits needed to store one output value."""
        return self.kind.bits

    def config(self) -> Dict[str, object]:
        """The keyword arguments that rebuild this unit with :func:`make_unit` (not the swap spec of :mod:`~lightning_ftprop.spec`)."""
        config: Dict[str, object] = {"activation": self.kind.name, "rule": self.rule.name, "weighted": self.weighted}
        config.update(self.kind.args())
        if len(self.kind.modes) > 1:
            config["mode"] = self.mode
        return config if self.keep == "input" else {**config, "keep": self.keep}

    def extra_repr(self) -> str:
        own = ", ".join(f"{k}={v!r}" for k, v in self.kind.args().items())
        mode = f"mode={self.mode!r}" if len(self.kind.modes) > 1 else ""
        keep = "" if self.keep == "input" else f", keep={self.keep!r}"
        kind = "" if type(self) is not ThresholdUnit else f"kind={self.kind!r}, "
        prefix = ", ".join(part for part in (own, mode) if part)
        return f"{kind}{prefix + ', ' if prefix else ''}rule={self.rule.name!r}, weighted={self.weighted}{keep}"

    def forward(self, z: Tensor) -> Tensor:
        return F.threshold(z, self.kind, self.rule, self.weighted, self.mode, self.keep)


class Sign(ThresholdUnit):
    """``h = sign(z)`` in {-1, +1}; backward ``|g| * dL/dz(z, sign(-g))``.

    >>> import torch
    >>> Sign()(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([-1., -1.,  1.])
    """

    def __init__(
        self, rule: Union[str, Rule] = DEFAULT_RULE, weighted: bool = True, inplace: bool = False, keep: str = "input"
    ):
        super().__init__(SignKind(), rule, weighted, inplace, keep)


class Step(ThresholdUnit):
    """``h = 1[z > 0]`` in {0, 1}; backward ``|g| * dL/dz(z, sign(-g))``.

    >>> import torch
    >>> Step()(torch.tensor([-0.5, 0.0, 2.0]))
    tensor([0., 0., 1.])
    """

    def __init__(
        self, rule: Union[str, Rule] = DEFAULT_RULE, weighted: bool = True, inplace: bool = False, keep: str = "input"
    ):
        super().__init__(StepKind(), rule, weighted, inplace, keep)


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

    def __init__(
        self,
        rule: Union[str, Rule] = DEFAULT_RULE,
        weighted: bool = True,
        inplace: bool = False,
        keep: str = "input",
        thresholds: int = 3,
        mode: str = "single",
    ):
        super().__init__(QReLUKind(thresholds), rule, weighted, inplace, keep, mode)

    @property
    def thresholds(self) -> int:
        """The number of thresholds ``n``."""
        return self.kind.n


#: Threshold unit name -> its own class, for the built-in kinds; any other registered kind
#: (:func:`lightning_ftprop.kinds.register_kind`) is built as a :class:`ThresholdUnit` by :func:`make_unit`.
UNIT_CLASSES: Dict[str, Type[ThresholdUnit]] = {"sign": Sign, "step": Step, "qrelu": QReLU}

_UNIT_ARGUMENTS = ("weighted", "inplace", "keep", "mode")


def make_unit(activation: str = "sign", rule: Union[str, Rule] = DEFAULT_RULE, **kwargs: Any) -> ThresholdUnit:
    """Build a threshold unit by name: ``make_unit("qrelu", "sste", thresholds=5)``.

    The name is a kind's (:func:`lightning_ftprop.kinds.kind_names`); the keyword arguments are the unit's
    (``weighted``, ``inplace``, ``keep``, ``mode``) and the kind's own (qrelu's ``thresholds``). This is where
    unit arguments are checked, for every caller (convert, the spec, the callback).

    Raises:
        ValueError: an unknown activation or rule (the message lists the valid names), or a bad
            unit argument value.
        TypeError: a keyword argument the unit does not take, or an argument of the wrong type.

    >>> make_unit("qrelu", "sste", thresholds=5, mode="per_threshold")
    QReLU(thresholds=5, mode='per_threshold', rule='sste', weighted=True)
    """
    name = check_unit_name(activation)
    cls = UNIT_CLASSES.get(name)
    if cls is not None:
        allowed = [p for p in inspect.signature(cls).parameters if p != "rule"]
    else:
        own = [p for p in inspect.signature(KINDS[name]).parameters]
        allowed = [*_UNIT_ARGUMENTS, *own]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        who = cls.__name__ if cls is not None else f"a {name} unit"
        raise TypeError(f"{who} does not take {', '.join(unknown)}; its arguments are: rule, {', '.join(allowed)}")
    if cls is not None:
        return cls(rule=rule, **kwargs)
    unit_args = {k: v for k, v in kwargs.items() if k in _UNIT_ARGUMENTS}
    kind = get_kind(name, **{k: v for k, v in kwargs.items() if k not in _UNIT_ARGUMENTS})
    return ThresholdUnit(kind, rule, **unit_args)


def check_unit_name(activation: str) -> str:
    """Validate a threshold unit name (a registered kind's, :func:`lightning_ftprop.kinds.kind_names`) and return it.

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
        raise TypeError(f"activation must be a name, one of {', '.join(KINDS)}; got {activation!r}")
    if activation not in KINDS:
        raise ValueError(f"unknown activation {activation!r}; valid activations are: {', '.join(KINDS)}")
    return activation
