"""Learning rules for hard-threshold units, kept as data.

FTPROP-MB (Friesen & Domingos, ICLR 2018) trains every hidden unit as a perceptron. In the backward
pass a unit with pre-activation ``z`` receives ``g = dL_above/dh``. It sets the discrete target

    t = sign(-g)        (t = 0 means "ignore this unit")

and returns the gradient of its own *layer loss* ``L(z, t)``. A rule is exactly that pair: the
per-unit loss ``L(z, t)`` and its derivative ``dL/dz``. Everything else (the activation's forward,
weighting by ``|g|``) lives in :mod:`lightning_ftprop.functional`.

Built-in rules (``t`` in {-1, +1})::

    name        L(z, t)                      dL/dz                      weighted backward |g|*dL/dz
    ste         -t*z                         -t                         g
    sste        clip(1 - t*z, 0, 2)          -t * 1[|t*z| <= 1]         g * 1[|z| <= 1]
    soft_hinge  1 - tanh(t*z)                -t * (1 - tanh^2(z))       g * (1 - tanh^2(z)) = g * 4y(1 - y)
    hinge       max(0, 1 - t*z)              -t * 1[t*z < 1]            g * 1[z*sign(g) > -1]
    log_loss    log(1 + exp(-t*z))           -t * sigmoid(-t*z)         g * sigmoid(z*sign(g))

``ste``, ``sste`` and ``soft_hinge`` are symmetric: their weighted backward is ``g * s(z)`` for a
fixed *surrogate* ``s`` that does not depend on the target. Such rules carry ``surrogate`` so the
backward can skip forming ``t``; the result is identical. They may also carry ``fused(g, z)``, a
``g * s(z)`` in fewer passes, and ``ste`` needs no input at all. ``soft_hinge`` computes
``1 - tanh^2(z)`` as ``4y(1 - y)`` with ``y = sigmoid(-2|z|)``: equal in exact arithmetic, without the
cancellation of ``1 - tanh^2`` in floating point.

Register your own rule with :func:`register_rule`, resolve a name with :func:`get_rule` and list them
with :func:`available_rules`:

>>> import torch
>>> soft_hinge = get_rule(DEFAULT_RULE)
>>> soft_hinge.loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]))  # 1 - tanh(t*z)
tensor([1.0000, 0.0360])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

TensorFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["Rule", "register_rule", "get_rule", "available_rules", "DEFAULT_RULE"]

#: The rule used when none is given: FTP-SH, the paper's best.
DEFAULT_RULE = "soft_hinge"


@dataclass(frozen=True)
class Rule:
    """A per-unit layer loss ``L(z, t)`` and its derivative ``dL/dz``.

    Args:
        name: the registry key, e.g. ``"soft_hinge"``.
        loss: ``L(z, t)``, elementwise; ``t`` holds -1, 0 or +1.
        grad: ``dL/dz (z, t)``, elementwise. It must vanish where ``t == 0`` only through the
            caller's masking; the backward multiplies by ``|g|`` (or ``|t|``) itself.
        surrogate: optional ``s(z)`` with ``|g| * grad(z, sign(-g)) == g * s(z)`` for every ``g``.
            Only symmetric rules have one; the backward then uses ``g * s(z)``.
        fused: optional ``fused(g, z) == g * surrogate(z)`` computed in fewer passes over memory.
        uses_input: ``False`` when ``surrogate`` is constant, so the backward saves nothing.
        edges: the values of ``u`` where ``loss``, ``grad`` or ``surrogate`` jump or kink (sste and
            hinge: -1 and 1). A shifted coordinate (qrelu's ``u = 2z - 1``) is corrected so that it
            compares with each edge exactly as the real number does, and masks stay exact.
        window: ``(w0, w1)`` when ``surrogate(u) == 1[w0 <= u <= w1]`` (sste: ``(-1, 1)``); the
            backward then tests the window on ``z`` itself, exact and in one pass.
        doc: the rule's formula in words, shown by ``help`` and the docs.

    Example:
        >>> import torch
        >>> square = Rule("square", loss=lambda z, t: (z - t) ** 2, grad=lambda z, t: 2 * (z - t))
        >>> square.grad(torch.tensor([0.5]), torch.tensor([1.0]))  # dL/dz at z = 0.5, t = +1
        tensor([-1.])
    """

    name: str
    loss: TensorFn
    grad: TensorFn
    surrogate: Optional[Callable[[Tensor], Tensor]] = field(default=None, compare=False)
    fused: Optional[TensorFn] = field(default=None, compare=False)
    uses_input: bool = True
    edges: Tuple[float, ...] = ()
    window: Optional[Tuple[float, float]] = None
    doc: str = ""

    def __repr__(self) -> str:
        return f"Rule({self.name!r})"


_REGISTRY: Dict[str, Rule] = {}


def register_rule(rule: Rule, *, overwrite: bool = False) -> Rule:
    """Add ``rule`` to the registry under ``rule.name`` and return it.

    Raises:
        TypeError: ``rule`` is not a :class:`Rule`.
        ValueError: the name is not an identifier, or is taken and ``overwrite`` is False.

    Example:
        >>> register_rule(Rule("square", loss=lambda z, t: (z - t) ** 2, grad=lambda z, t: 2 * (z - t)))
        Rule('square')
        >>> get_rule("square").name
        'square'
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"register_rule expects a Rule, got {type(rule).__name__}")
    if not rule.name or not rule.name.isidentifier():
        raise ValueError(f"rule name must be a Python identifier, got {rule.name!r}")
    if rule.name in _REGISTRY and not overwrite:
        raise ValueError(f"a rule named {rule.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[rule.name] = rule
    return rule


def available_rules() -> List[str]:
    """The names of all registered rules, sorted.

    Example:
        >>> available_rules()
        ['hinge', 'log_loss', 'soft_hinge', 'sste', 'ste']
    """
    return sorted(_REGISTRY)


def get_rule(rule: Union[str, Rule]) -> Rule:
    """Resolve a rule name (or pass a :class:`Rule` through).

    Raises:
        ValueError: for an unknown name; the message lists the registered ones.
        TypeError: ``rule`` is neither a name nor a :class:`Rule`.

    Example:
        >>> import torch
        >>> sste = get_rule("sste")
        >>> sste.surrogate(torch.tensor([-2.0, 0.5, 2.0]))  # the gradient passes only where |z| <= 1
        tensor([0., 1., 0.])
    """
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a name or a Rule, got {rule!r}; valid rules are: {', '.join(available_rules())}")
    if isinstance(rule, str) and rule in _REGISTRY:
        return _REGISTRY[rule]
    raise ValueError(f"unknown rule {rule!r}; valid rules are: {', '.join(available_rules())}")


# --- built-in rules -------------------------------------------------------------------------------


def _ste_loss(z: Tensor, t: Tensor) -> Tensor:
    return -t * z


def _ste_grad(z: Tensor, t: Tensor) -> Tensor:
    return -t * torch.ones_like(z)


def _ste_fused(g: Tensor, z: Tensor) -> Tensor:
    return g


def _sste_loss(z: Tensor, t: Tensor) -> Tensor:
    return (1 - t * z).clamp(0, 2)


def _sste_grad(z: Tensor, t: Tensor) -> Tensor:
    return -t * ((t * z).abs() <= 1).to(z.dtype)


def _sste_surrogate(z: Tensor) -> Tensor:
    return (z.abs() <= 1).to(z.dtype)


def _sste_fused(g: Tensor, z: Tensor) -> Tensor:
    # hardtanh_backward keeps g where min < z < max; the next float past 1 makes the window closed.
    edge = 1 + torch.finfo(z.dtype).eps
    return torch.ops.aten.hardtanh_backward(g, z, -edge, edge)


def _soft_hinge_loss(z: Tensor, t: Tensor) -> Tensor:
    return 1 - torch.tanh(t * z)


def _tail(z: Tensor) -> Tensor:
    """``y = sigmoid(-2|z|)`` in ``(0, 1/2]``, so that ``1 - tanh^2(z) = 4 y (1 - y)``.

    ``1 - tanh(z)^2`` loses its digits to cancellation as ``tanh(z)`` nears 1: in float32 it is up to 11%
    off for ``|z| <= 8``, 96% off by 9 and exactly 0 beyond; ``4 y (1 - y)`` stays within 8e-7 (relative)
    up to ``|z| = 12``. On the CPU it is also three times faster: 5.7 against 16.8 ms over the 17 units
    of a resnet18 step (``benchmarks/soft_hinge.py``, benchmarks/logs/soft_hinge_sigmoid_cpu.log).
    """
    return torch.abs(z).mul_(-2).sigmoid_()


def _soft_hinge_grad(z: Tensor, t: Tensor) -> Tensor:
    return -t * _soft_hinge_surrogate(z)  # 1 - tanh^2(t z) = 1 - tanh^2(z) for t = +-1


def _soft_hinge_surrogate(z: Tensor) -> Tensor:
    y = _tail(z)
    return torch.sub(1, y).mul_(y).mul_(4)


def _soft_hinge_fused(g: Tensor, z: Tensor) -> Tensor:
    return torch.ops.aten.sigmoid_backward(g, _tail(z)).mul_(4)  # g * 4 y (1 - y) = g * (1 - tanh^2(z))


def _hinge_loss(z: Tensor, t: Tensor) -> Tensor:
    return (1 - t * z).clamp_min(0)


def _hinge_grad(z: Tensor, t: Tensor) -> Tensor:
    return -t * (t * z < 1).to(z.dtype)


def _log_loss(z: Tensor, t: Tensor) -> Tensor:
    return torch.nn.functional.softplus(-t * z)


def _log_grad(z: Tensor, t: Tensor) -> Tensor:
    return -t * torch.sigmoid(-t * z)


register_rule(
    Rule(
        "ste",
        _ste_loss,
        _ste_grad,
        surrogate=torch.ones_like,
        fused=_ste_fused,
        uses_input=False,
        doc="Linear loss L = -t*z. Weighted backward: g (the identity straight-through estimator).",
    )
)
register_rule(
    Rule(
        "sste",
        _sste_loss,
        _sste_grad,
        surrogate=_sste_surrogate,
        fused=_sste_fused,
        edges=(-1.0, 1.0),
        window=(-1.0, 1.0),
        doc="Saturated hinge L = clip(1 - t*z, 0, 2). Weighted backward: g*1[|z|<=1] (the saturated STE).",
    )
)
register_rule(
    Rule(
        "soft_hinge",
        _soft_hinge_loss,
        _soft_hinge_grad,
        surrogate=_soft_hinge_surrogate,
        fused=_soft_hinge_fused,
        doc="Soft hinge L = 1 - tanh(t*z) (FTP-SH). Weighted backward: g*(1 - tanh^2(z)).",
    )
)
register_rule(
    Rule(
        "hinge",
        _hinge_loss,
        _hinge_grad,
        edges=(-1.0, 1.0),
        doc="Hinge L = max(0, 1 - t*z). dL/dz = -t*1[t*z < 1]; depends on the target.",
    )
)
register_rule(
    Rule(
        "log_loss",
        _log_loss,
        _log_grad,
        doc="Logistic loss L = log(1 + exp(-t*z)). dL/dz = -t*sigmoid(-t*z); depends on the target.",
    )
)
