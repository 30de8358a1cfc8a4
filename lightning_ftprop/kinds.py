"""Unit kinds: what a threshold unit *is*, in one object: its thresholds, output values, forward, codes and bits.

A kind is a staircase: ``K`` ascending thresholds ``theta_1 < ... < theta_K`` and ``K + 1`` equally spaced
output values ``v_0 < ... < v_K``::

    code(z) = #{k : z > theta_k}                        0 .. K   (NaN in gives NaN out)
    h(z)    = v_code = (a * code + b) / d                 a, b, d integers: exact in every float dtype

The units (:mod:`lightning_ftprop.nn`) and their autograd nodes (:mod:`lightning_ftprop.functional`)
carry their kind, and everything else reads it: the backward's coordinates (:meth:`UnitKind.affine_maps`),
the memory codec (codes and bits, :mod:`lightning_ftprop.memory`), export (frozen and folded units) and the
diagnostics. Adding a unit is one subclass plus :func:`register_kind`; the built-in kinds::

    kind            thetas                   values                   levels  bits
    sign            0                        -1, +1                   2       1
    step            0                        0, 1                     2       1
    qrelu (n)       k / (n - 1), k < n       0, 1/n, ..., 1           n + 1   ceil(log2(n + 1))

The backward sees the unit through affine coordinates ``u = a z + b`` (:meth:`UnitKind.affine_maps`):
in ``"single"`` mode one coordinate that maps the threshold span onto ``[-1, 1]`` (``u = z - theta`` for
one threshold), in ``"per_threshold"`` mode ``u_k = z - theta_k`` scaled by the step's share of the
output range, ``(v_k - v_{k-1}) / (v_K - v_0)``.

>>> kind = get_kind("qrelu", thresholds=3)
>>> kind, kind.levels, kind.bits, [str(t) for t in kind.thetas]
(QReLUKind(thresholds=3), 4, 2, ['0', '1/2', '1'])
>>> kind.forward(torch.tensor([-1.0, 0.2, 0.6, 2.0]))
tensor([0.0000, 0.3333, 0.6667, 1.0000])
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, Dict, List, Tuple, Type

import torch
from torch import Tensor

__all__ = [
    "sign_values",
    "step_values",
    "qrelu_values",
    "UnitKind",
    "SignKind",
    "StepKind",
    "QReLUKind",
    "KINDS",
    "register_kind",
    "unregister_kind",
    "get_kind",
    "kind_names",
]

#: The backward modes a kind with several thresholds has (one threshold: ``"single"`` only).
MODES: Tuple[str, ...] = ("single", "per_threshold")


def step_values(z: Tensor) -> Tensor:
    """``1[z > 0]`` as ``z``'s dtype (NaN stays NaN): ``ceil(clip(z, 0, 1))``.

    >>> step_values(torch.tensor([-1.0, 0.0, 2.0]))
    tensor([0., 0., 1.])
    """
    # ceil(clip(z, 0, 1)) is 1 for z > 0 and 0 for z <= 0, and NaN stays NaN (torch.sign(NaN) is 0).
    return torch.clamp(z, 0, 1).ceil_()


def memoised(fn):
    """Memoise ``fn`` on its (hashable) arguments. Under torch.compile ``fn`` is traced instead: its result
    is constant for the graph anyway, and a traced graph may not write to the cache.

    >>> calls = []
    >>> square = memoised(lambda x: calls.append(x) or x * x)
    >>> square(3), square(3), calls
    (9, 9, [3])
    """
    cache: dict = {}

    @functools.wraps(fn)
    def wrapper(*args):
        if torch.compiler.is_compiling():
            return fn(*args)
        if args not in cache:
            cache[args] = fn(*args)
        return cache[args]

    wrapper.cache = cache
    return wrapper


def check_thresholds(thresholds: int) -> int:
    """Validate qrelu's number of thresholds (an int >= 2).

    >>> check_thresholds(1)
    Traceback (most recent call last):
    ValueError: qrelu thresholds must be an int >= 2, got 1
    """
    if isinstance(thresholds, bool) or not isinstance(thresholds, int) or thresholds < 2:
        raise ValueError(f"qrelu thresholds must be an int >= 2, got {thresholds!r}")
    return thresholds


def sign_values(z: Tensor) -> Tensor:
    """``+1 if z > 0 else -1`` (NaN stays NaN).

    >>> sign_values(torch.tensor([-1.0, 0.0, 2.0]))
    tensor([-1., -1.,  1.])
    """
    # -1 where z <= 0 (NaN stays), then 1 for every z > 0: three passes (2 * step - 1 takes four)
    return torch.threshold(z, 0, -1).clamp_(max=1).ceil_()


def qrelu_values(z: Tensor, thresholds: int) -> Tensor:
    """``clip(ceil((n - 1) z), 0, n) / n`` with ``n = thresholds`` (NaN stays NaN).

    >>> qrelu_values(torch.tensor([0.2, 0.6]), 3)
    tensor([0.3333, 0.6667])
    """
    return torch.clamp(torch.mul(z, thresholds - 1).ceil_(), 0, thresholds).div_(thresholds)  # clamp_: no vmap rule


class UnitKind:
    """A threshold unit's kind (see the module docstring). Subclass it to add a unit.

    A subclass sets :attr:`name`, :attr:`thetas` (the threshold positions) and :attr:`values` (Fractions,
    ascending, values equally spaced). The defaults of :meth:`index` and :meth:`forward` compare ``z`` with
    each threshold (``ceil(clip(z - theta, 0, 1))``, exact when every threshold is a float of ``z``'s dtype);
    a kind may override them with faster arithmetic that gives the same codes. Two kinds are equal when
    their class and :meth:`args` are.

    >>> class Ternary(UnitKind):
    ...     name = "ternary"
    ...     def __init__(self):
    ...         self.thetas = (Fraction(-1, 2), Fraction(1, 2))
    ...         self.values = (Fraction(-1), Fraction(0), Fraction(1))
    >>> Ternary().forward(torch.tensor([-0.7, -0.5, 0.1, 0.5, 0.9]))
    tensor([-1., -1.,  0.,  0.,  1.])
    """

    #: The activation name that ``make_unit``, ``convert`` and the spec accept.
    name: str = ""
    #: The threshold positions ``theta_1 < ... < theta_K`` (qrelu's count of them is its ``thresholds``).
    thetas: Tuple[Fraction, ...] = ()
    #: The output values ``v_0 < ... < v_K``, equally spaced.
    values: Tuple[Fraction, ...] = ()

    def args(self) -> Dict[str, Any]:
        """The constructor arguments of this kind (``{}`` for sign, ``{"thresholds": n}`` for qrelu)."""
        return {}

    # --- what follows from thresholds and values -------------------------------------------------------

    @property
    def levels(self) -> int:
        """The number of output values."""
        return len(self.values)

    @property
    def bits(self) -> int:
        """Bits per code: ``max(1, ceil(log2(levels)))``."""
        return max(1, math.ceil(math.log2(self.levels)))

    @property
    def modes(self) -> Tuple[str, ...]:
        """The backward modes: ``("single",)`` with one threshold, else ``("single", "per_threshold")``."""
        return MODES if len(self.thetas) > 1 else MODES[:1]

    @property
    def code_map(self) -> Tuple[int, int, int]:
        """``(a, b, d)`` with ``v_j = (a j + b) / d``: integers, ``a > 0``, ``d >= 1``."""
        return _code_map(self)

    def _code_map(self) -> Tuple[int, int, int]:
        d = math.lcm(*(v.denominator for v in self.values))
        step = self.values[1] - self.values[0]
        return int(step * d), int(self.values[0] * d), d

    def affine_maps(self, mode: str = "single") -> List[Tuple[Fraction, Fraction, float]]:
        """``[(a, b, scale)]``: the backward applies its rule at ``u = a z + b`` and sums ``scale * grad``."""
        return _affine_maps(self, mode)

    def sees_z(self, mode: str = "single") -> bool:
        """Whether the backward's one coordinate is ``z`` itself (``u = z``: sign and step)."""
        return self.affine_maps(mode) == [(1, 0, 1.0)]

    def _affine_maps(self, mode: str) -> List[Tuple[Fraction, Fraction, float]]:
        first, last = self.thetas[0], self.thetas[-1]
        if mode == "per_threshold" and len(self.thetas) > 1:
            span = self.values[-1] - self.values[0]
            gaps = [high - low for low, high in zip(self.values, self.values[1:])]
            return [(Fraction(1), -theta, float(gap / span)) for theta, gap in zip(self.thetas, gaps)]
        if first == last:
            return [(Fraction(1), -first, 1.0)]
        half = (last - first) / 2
        return [(1 / half, -(first + half) / half, 1.0)]

    # --- codes and values ---------------------------------------------------------------------------------

    def index(self, z: Tensor) -> Tensor:
        """``code(z) = #{k : z > theta_k}`` in ``z``'s dtype (NaN stays NaN)."""
        out = None
        for theta in self.thetas:
            above = step_values(z - float(theta)) if theta else step_values(z)
            out = above if out is None else out.add_(above)
        return out

    def decode(self, codes: Tensor, dtype: torch.dtype) -> Tensor:
        """The output values of integer ``codes``: ``(a * code + b) / d`` in ``dtype`` (exact: one rounding)."""
        a, b, d = self.code_map
        h = codes.to(dtype)
        if a != 1:
            h = h * a
        if b:
            h = h + b
        return h if d == 1 else h / d

    def forward(self, z: Tensor) -> Tensor:
        """The unit's output ``h(z) = v_code(z)``."""
        return self.decode(self.index(z), z.dtype)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.args() == self.args()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.args().items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.args().items())})"


# Per kind (and mode): the backward and the memory codec ask on every call.
_affine_maps = memoised(lambda kind, mode: kind._affine_maps(mode))
_code_map = memoised(lambda kind: kind._code_map())


class SignKind(UnitKind):
    """``h = +1 if z > 0 else -1`` (``sign(0) = -1``).

    >>> SignKind().forward(torch.tensor([-1.0, 0.0, 2.0])), SignKind().code_map
    (tensor([-1., -1.,  1.]), (2, -1, 1))
    """

    name = "sign"
    thetas = (Fraction(0),)
    values = (Fraction(-1), Fraction(1))

    def forward(self, z: Tensor) -> Tensor:
        return sign_values(z)


class StepKind(UnitKind):
    """``h = 1 if z > 0 else 0``.

    >>> StepKind().forward(torch.tensor([-1.0, 0.0, 2.0]))
    tensor([0., 0., 1.])
    """

    name = "step"
    thetas = (Fraction(0),)
    values = (Fraction(0), Fraction(1))

    def forward(self, z: Tensor) -> Tensor:
        return step_values(z)


class QReLUKind(UnitKind):
    """``h = clip(ceil((n - 1) z), 0, n) / n`` with ``n = thresholds`` (at ``k / (n - 1)``): ``n + 1`` levels.

    Its codes are ``clip(ceil((n - 1) z), 0, n)``, the forward's own arithmetic.

    >>> QReLUKind(5).values[:3], QReLUKind(5).bits
    ((Fraction(0, 1), Fraction(1, 5), Fraction(2, 5)), 3)
    """

    name = "qrelu"

    def __init__(self, thresholds: int = 3):
        self.n = check_thresholds(thresholds)
        self.thetas = tuple(Fraction(k, thresholds - 1) for k in range(thresholds))
        self.values = tuple(Fraction(k, thresholds) for k in range(thresholds + 1))

    def args(self) -> Dict[str, Any]:
        return {"thresholds": self.n}

    def index(self, z: Tensor) -> Tensor:
        return torch.clamp(torch.mul(z, self.n - 1).ceil_(), 0, self.n)  # clamp_ has no vmap rule

    def forward(self, z: Tensor) -> Tensor:
        return qrelu_values(z, self.n)


#: Kind name -> kind class: every activation name a unit can be built from.
KINDS: Dict[str, Type[UnitKind]] = {"sign": SignKind, "step": StepKind, "qrelu": QReLUKind}
_BUILT_IN = tuple(KINDS)


def register_kind(cls: Type[UnitKind]) -> Type[UnitKind]:
    """Add a kind (usable as a class decorator); ``make_unit(cls.name)`` and ``convert`` then know it.

    Raises:
        TypeError: not a :class:`UnitKind` subclass.
        ValueError: no name, a name in use, or thresholds and values that are not a staircase.

    >>> class Uneven(UnitKind):
    ...     name = "uneven"
    ...     thetas = (Fraction(0), Fraction(1))
    ...     values = (Fraction(0), Fraction(1), Fraction(3))
    >>> register_kind(Uneven)
    Traceback (most recent call last):
    ValueError: Uneven(): the values must be equally spaced, ascending, at most 256; got (Fraction(0, 1), Fraction(1, 1), Fraction(3, 1))
    """
    if not (isinstance(cls, type) and issubclass(cls, UnitKind)):
        raise TypeError(f"register_kind() takes a UnitKind subclass, got {cls!r}")
    if not cls.name or cls.name in KINDS and KINDS[cls.name] is not cls:
        raise ValueError(f"a kind needs a new name; {cls.name!r} is empty or taken (taken: {', '.join(KINDS)})")
    _check_staircase(cls())
    KINDS[cls.name] = cls
    return cls


def unregister_kind(name: str) -> None:
    """Remove a kind added with :func:`register_kind` (the built-in kinds stay).

    Raises:
        ValueError: a built-in or unknown name.

    >>> unregister_kind("sign")
    Traceback (most recent call last):
    ValueError: 'sign' is built in or not registered; registered beyond the built-ins: none
    """
    if name in _BUILT_IN or name not in KINDS:
        added = [n for n in KINDS if n not in _BUILT_IN]
        raise ValueError(
            f"{name!r} is built in or not registered; registered beyond the built-ins: {', '.join(added) or 'none'}"
        )
    del KINDS[name]


def _check_staircase(kind: UnitKind) -> None:
    thetas, values = kind.thetas, kind.values
    gaps = {high - low for low, high in zip(values, values[1:])}
    if not thetas or len(values) != len(thetas) + 1 or list(thetas) != sorted(set(thetas)):
        raise ValueError(f"{kind!r}: K ascending thresholds and K + 1 values are needed, got {thetas}, {values}")
    if len(gaps) != 1 or next(iter(gaps)) <= 0 or len(values) > 256:
        raise ValueError(f"{kind!r}: the values must be equally spaced, ascending, at most 256; got {values}")


def kind_names() -> List[str]:
    """The registered kind names, in registration order.

    >>> kind_names()[:3]
    ['sign', 'step', 'qrelu']
    """
    return list(KINDS)


def get_kind(name: str, **args: Any) -> UnitKind:
    """The kind called ``name`` with its arguments.

    Raises:
        ValueError: an unknown name (the message lists the known ones).

    >>> get_kind("sign")
    SignKind()
    """
    if name not in KINDS:
        raise ValueError(f"unknown activation {name!r}; valid activations are: {', '.join(KINDS)}")
    return KINDS[name](**args)
