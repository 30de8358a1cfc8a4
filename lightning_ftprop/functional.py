"""Hard-threshold activations whose backward pass does feasible target propagation (FTPROP-MB).

Each activation is a static-method :class:`torch.autograd.Function`. The forward is the hard
threshold; the backward receives ``g = dL/dh`` and returns the gradient of the unit's layer loss::

    t  = sign(-g)                                   the unit's target; t = 0 ignores the unit
    dz = |g| * dL/dz(u, t)                          weighted=True (the paper's default)
    dz = |t| * dL/dz(u, t) / B                      weighted=False (only sign(g) is used; B = batch)

``L`` is a :class:`~lightning_ftprop.rules.Rule` and ``u`` is the coordinate in which the rule sees
the unit (``u = z`` for sign and step). A shifted coordinate is *edge-exact*: it compares with each
of the rule's edges (sste and hinge: ``u = +-1``) exactly as the real number does, so masks equal
their closed form in ``z`` for every float input (see :func:`edge_exact_affine`); sste's window
``1[|u| <= 1]`` is tested on ``z`` itself. For symmetric rules the weighted backward equals
``g * s(u)`` for the rule's surrogate ``s`` (``soft_hinge``: ``s = 1 - tanh^2``), and that form is
used. Forward values::

    sign(z)  = +1 if z > 0 else -1
    step(z)  =  1 if z > 0 else 0
    qrelu(z) = clip(ceil((n - 1) * z), 0, n) / n        n = thresholds; n = 3 is the paper's 2-bit qReLU

NaN in gives NaN out. ``qrelu`` has two backward modes:

* ``"single"`` (the paper's code): one rule centred on the middle of the staircase,
  ``u = 2z - 1``, so ``soft_hinge`` gives ``g * (1 - tanh^2(2z - 1))`` and ``sste`` gives
  ``g * 1[0 <= z <= 1]``.
* ``"per_threshold"``: the staircase is ``(1/n) * sum_k step(z - theta_k)`` with thresholds
  ``theta_k = k / (n - 1)``; the rule is applied to each step unit and summed,
  ``dz = (1/n) * sum_k grad(z - theta_k)``.

What the backward keeps (``keep``). By default (``"input"``) it keeps ``z`` and the gradient is exact; ``ste``
keeps nothing. For a symmetric rule in weighted mode the backward only needs the unit's surrogate
``S(z)`` (for qrelu the sum above), so a compact form can be kept instead:

    keep="input"   z as it is (4 bytes per float32 element); exact
    keep="bf16"    S(z) in bfloat16 (2 bytes); relative error <= 2^-8
    keep="uint8"   round(255 * S(z)) (1 byte); absolute error <= 1/510, exact for ste and sste

Other rules, and ``weighted=False``, always keep ``z``.

torch.func: the Functions set ``generate_vmap_rule``, so ``vmap``, ``grad``, ``jacrev`` and
``functional_call`` work, and ``vmap(grad(f))`` gives per-sample gradients equal to a Python loop
over the samples. Per-sample means *as if ``f`` were called on one sample*: under ``vmap`` the
unbatched ``B = g.shape[0]`` of ``weighted=False`` is the leading dimension that ``f`` itself sees
(1 for the usual ``f(x.unsqueeze(0))``), exactly as in the loop.
"""

from __future__ import annotations

import functools
import math
import warnings
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from lightning_ftprop import compiled
from lightning_ftprop.kinds import (
    MODES,
    QReLUKind,
    SignKind,
    StepKind,
    UnitKind,
    check_thresholds,
    memoised,
    qrelu_values,
    sign_values,
    step_values,
)
from lightning_ftprop.rules import DEFAULT_RULE, Rule, get_rule
from lightning_ftprop.unit_state import UnitCall, active_policy

__all__ = [
    "sign",
    "step",
    "qrelu",
    "threshold",
    "target_prop_grad",
    "ThresholdFunction",
    "QRELU_MODES",
    "edge_exact_affine",
    "unit_coordinates",
    "KEEP_FORMS",
    "sign_values",
    "step_values",
    "qrelu_values",
    "output_kind",
]

#: The backward modes of :func:`qrelu` (see its docstring); every kind with several thresholds has them.
QRELU_MODES: Tuple[str, ...] = MODES
KEEP_FORMS: Tuple[str, ...] = ("input", "bf16", "uint8")


def target_prop_grad(g: Tensor, u: Tensor, rule: Rule, weighted: bool) -> Tensor:
    """The FTPROP-MB backward of one threshold unit: ``|g| * dL/du(u, sign(-g))``.

    Without weighting, ``|t| * dL/du(u, t) / B`` with ``B = g.shape[0]``.

    Example:
        >>> import torch
        >>> from lightning_ftprop.rules import get_rule
        >>> g, u = torch.tensor([0.5, -2.0, 0.0]), torch.tensor([0.0, 3.0, 1.0])
        >>> target_prop_grad(g, u, get_rule("sste"), weighted=True)  # |u| > 1 saturates; g = 0 ignores
        tensor([0.5000, 0.0000, 0.0000])
    """
    if weighted:
        if rule.fused is not None:
            return rule.fused(g, u)
        if rule.surrogate is not None:
            return g * rule.surrogate(u)
        return g.abs() * rule.grad(u, -torch.sign(g))
    t = -torch.sign(g)
    batch = g.shape[0] if g.dim() > 0 else 1
    return t.abs() * rule.grad(u, t) / batch


# --- forwards: the kinds' (lightning_ftprop.kinds), re-exported here ------------------------------


# --- what the backward keeps -----------------------------------------------------------------------

Coordinates = List[Tuple[Tensor, float]]  # (u, scale): dz = sum of scale * backward(g, u)


def _affine(z: Tensor, a: Fraction, b: Fraction) -> Tensor:
    scale = int(a) if a.denominator == 1 else float(a)
    return torch.mul(z, scale).add_(float(b)) if a != 1 else z + float(b)


@memoised
def _neighbours(edge: float, a: Fraction, b: Fraction, dtype: torch.dtype) -> Tuple[float, float, Optional[float]]:
    """For the real ``z_e = (edge - b) / a``: the largest float of ``dtype`` below it, the smallest
    above it, and ``z_e`` itself if it is a float of ``dtype`` (else None)."""
    z_e = (Fraction(edge) - b) / a
    guess = torch.tensor(float(z_e), dtype=torch.float64).to(dtype)
    lo, hi = guess, guess
    while Fraction(lo.item()) >= z_e:
        lo = torch.nextafter(lo, torch.tensor(-math.inf, dtype=dtype))
    while Fraction(hi.item()) <= z_e:
        hi = torch.nextafter(hi, torch.tensor(math.inf, dtype=dtype))
    return lo.item(), hi.item(), guess.item() if Fraction(guess.item()) == z_e else None


@memoised
def _edge_fix(edge: float, a: Fraction, b: Fraction, dtype: torch.dtype) -> Tuple[Optional[Tuple[float, float]], ...]:
    """What rounding ``u = a*z + b`` in ``dtype`` can get wrong about ``edge``, and the fix.

    Three entries, each None when nothing needs fixing: ``(lo, down)``: for ``z <= lo`` (every
    float below ``z_e``) ``u`` must be ``<= down``, the float below ``edge``; ``(hi, up)``: for
    ``z >= hi`` ``u`` must be ``>= up``; ``(z_e, edge)``: at ``z = z_e`` ``u`` must be ``edge``.
    Rounding is monotone in ``z``, so checking ``u`` at ``lo``, ``hi`` and ``z_e`` with the very
    ops of :func:`_affine` tells whether any float input needs the fix.
    """
    lo, hi, z_e = _neighbours(edge, a, b, dtype)

    def u(x: float) -> float:
        return _affine(torch.tensor(x, dtype=dtype), a, b).item()

    def beside(direction: float) -> float:
        return torch.nextafter(torch.tensor(edge, dtype=dtype), torch.tensor(direction, dtype=dtype)).item()

    return (
        (lo, beside(-math.inf)) if u(lo) >= edge else None,
        (hi, beside(math.inf)) if u(hi) <= edge else None,
        (z_e, edge) if z_e is not None and u(z_e) != edge else None,
    )


def edge_exact_affine(z: Tensor, a: Union[int, Fraction], b: Union[int, Fraction], edges: Sequence[float]) -> Tensor:
    """``u = a*z + b`` (``a > 0``) in ``z``'s dtype, corrected so that ``u`` compares with every edge
    exactly as the real number ``a*z + b`` does.

    Rounding ``a*z + b`` can land on an edge (``2*(-1e-8) - 1`` is ``-1.0`` in float32) and put a
    unit on the wrong side of a rule's mask. Where it does, ``u`` becomes the float next to the
    edge on the true side (or the edge itself where ``a*z + b`` equals it), so a mask such as
    ``1[|u| <= 1]`` equals its closed form in ``z``'s own coordinate for every float input.
    Elsewhere ``u`` is the plain rounded value. Edges that rounding cannot get wrong for this
    ``(a, b, dtype)`` (qrelu's ``u = 2z - 1`` at ``+1``) cost nothing.

    Example:
        >>> import torch
        >>> z = torch.tensor([-1e-8, 0.25])
        >>> 2 * z - 1  # rounding puts the first value on the edge -1
        tensor([-1.0000, -0.5000])
        >>> (edge_exact_affine(z, 2, -1, (-1.0, 1.0))[0] < -1).item()  # the true 2z - 1 lies below it
        True
    """
    a, b = Fraction(a), Fraction(b)
    u = _affine(z, a, b)
    for edge in edges:
        below, above, exact = _edge_fix(float(edge), a, b, z.dtype)
        if below is not None and above is not None:
            u = torch.where(z <= below[0], u.clamp(max=below[1]), torch.where(z >= above[0], u.clamp(min=above[1]), u))
        elif below is not None:
            u = torch.where(z <= below[0], u.clamp(max=below[1]), u)
        elif above is not None:
            u = torch.where(z >= above[0], u.clamp(min=above[1]), u)
        if exact is not None:
            u = torch.where(z == exact[0], exact[1], u)
    return u


def _coordinates(z: Tensor, kind: UnitKind, mode: str, edges: Sequence[float] = ()) -> Coordinates:
    """Where the rule looks at the unit: ``u = z`` (sign, step) or the kind's affine maps (see its docstring).

    Shifted coordinates are edge-exact for ``edges`` (see :func:`edge_exact_affine`).
    """
    if kind.sees_z(mode):
        return [(z, 1.0)]
    return [(edge_exact_affine(z, a, b, edges), scale) for a, b, scale in kind.affine_maps(mode)]


def unit_coordinates(z: Tensor, kind: UnitKind, mode: str = "single", edges: Sequence[float] = ()) -> Coordinates:
    """The coordinates ``[(u, scale), ...]`` in which a unit of ``kind`` applies its rule.

    The backward returns ``sum scale * target_prop_grad(g, u, rule, weighted)`` over them
    (:meth:`~lightning_ftprop.kinds.UnitKind.affine_maps`): one ``(z, 1.0)`` for sign and step, one
    ``(2z - 1, 1.0)`` for qrelu ``"single"``, and ``(z - theta_k, 1/n)`` per threshold
    ``theta_k = k / (n - 1)``, ``n = thresholds``, for ``"per_threshold"``.
    Shifted coordinates are edge-exact for ``edges`` (:func:`edge_exact_affine`).

    >>> kind = QReLUKind(3)
    >>> [(u.tolist(), scale) for u, scale in unit_coordinates(torch.tensor([0.25]), kind, "per_threshold")]
    [([0.25], 0.3333333333333333), ([-0.25], 0.3333333333333333), ([-0.75], 0.3333333333333333)]
    """
    return _coordinates(z, kind, mode, edges)


def _window_backward(g: Tensor, z: Tensor, window: Tuple[float, float], kind: UnitKind, mode: str) -> Tensor:
    """``sum scale * g * 1[w0 <= a*z + b <= w1]``, the window tested on ``z`` itself: exact, one pass each.

    ``hardtanh_backward`` keeps ``g`` where ``lo < z < hi``; with ``lo`` the float below the real
    ``(w0 - b) / a`` and ``hi`` the float above ``(w1 - b) / a`` that is the closed window.
    """
    grads = []
    for a, b, scale in kind.affine_maps(mode):
        lo, hi = _neighbours(window[0], a, b, z.dtype)[0], _neighbours(window[1], a, b, z.dtype)[1]
        grad = torch.ops.aten.hardtanh_backward(g, z, lo, hi)
        grads.append(grad if scale == 1.0 else grad.mul_(scale))
    return grads[0] if len(grads) == 1 else sum(grads)


def _save(ctx, z: Tensor, kind: UnitKind, rule: Rule, weighted: bool, keep: str, mode: str) -> None:
    """Keep what the backward needs; ``ctx.kept`` says what and why (``(what, why)``, read by summary).

    A unit-state policy (:mod:`lightning_ftprop.unit_state`) active in this thread may keep less.
    """
    ctx.kind, ctx.rule, ctx.weighted, ctx.mode = kind, rule, weighted, mode
    ctx.unit_backward = None
    symmetric = weighted and rule.surrogate is not None
    keeps_z = rule.uses_input and not (symmetric and keep != "input")
    why = f"{rule.name}'s backward reads z"
    policy = active_policy()
    if policy is not None:
        backward_from_z = functools.partial(_backward_from_z, rule=rule, weighted=weighted, kind=kind, mode=mode)
        state = policy(UnitCall(z, rule, weighted, kind, mode, keeps_z, backward_from_z))
        if state is not None and state.backward is not None:
            ctx.kept, ctx.unit_backward, ctx.compact = (state.kept, state.why), state.backward, True
            ctx.save_for_backward(*state.tensors)
            return
        why = state.why if state is not None else why
    ctx.compact = symmetric and rule.uses_input and keep != "input"  # keeps S(z), not z
    if symmetric and not rule.uses_input:
        ctx.kept = ("nothing", f"{rule.name}'s surrogate is constant")
        ctx.save_for_backward()
    elif ctx.compact:
        ctx.kept = (f"S(z) as {keep}", f"keep={keep!r}")
        s = sum(scale * rule.surrogate(u) for u, scale in _coordinates(z, kind, mode, rule.edges))
        if keep == "bf16":
            ctx.save_for_backward(s.to(torch.bfloat16))
        else:
            ctx.save_for_backward(s.clamp(0, 1).mul_(255).round_().to(torch.uint8))
    else:
        ctx.kept = (f"z ({str(z.dtype).removeprefix('torch.')})", why)
        ctx.save_for_backward(z)


def _backward_from_z(g: Tensor, z: Tensor, rule: Rule, weighted: bool, kind: UnitKind, mode: str) -> Tensor:
    """The unit's backward from its pre-activation ``z`` (what ``keep="input"`` keeps)."""
    if weighted and rule.window is not None and not kind.sees_z(mode):
        return _window_backward(g, z, rule.window, kind, mode)
    grads = []
    for u, scale in _coordinates(z, kind, mode, rule.edges):
        grad = target_prop_grad(g, u, rule, weighted)
        grads.append(grad if scale == 1.0 else scale * grad)  # sign and step: no pass for the scale 1
    return grads[0] if len(grads) == 1 else sum(grads)


def _backward(ctx, g: Tensor) -> Tensor:
    rule = ctx.rule
    tensors = ctx.saved_tensors  # read once: torch.utils.checkpoint allows a single unpack
    if ctx.unit_backward is not None:  # a unit-state policy's (lightning_ftprop.unit_state)
        return ctx.unit_backward(tensors, g)
    if not tensors:  # a constant surrogate (ste)
        return rule.fused(g, g) if rule.fused is not None else g * rule.surrogate(g)
    (kept,) = tensors
    if ctx.compact:
        s = kept.to(g.dtype)
        return g * s if kept.dtype == torch.bfloat16 else (g * s).mul_(1 / 255)
    return _backward_from_z(g, kept, rule, ctx.weighted, ctx.kind, ctx.mode)


# --- autograd Functions ----------------------------------------------------------------------------


class ThresholdFunction(torch.autograd.Function):
    """``h = kind.forward(z)``; backward ``|g| * dL/du(u, sign(-g))`` summed over the kind's coordinates.

    Inputs ``(z, kind, rule, weighted, keep, mode)``; the node carries ``kind`` (see :func:`output_kind`).

    Example:
        >>> import torch
        >>> from lightning_ftprop.rules import get_rule
        >>> z = torch.tensor([0.3, -1.5], requires_grad=True)
        >>> ThresholdFunction.apply(z, SignKind(), get_rule("ste"), True, "input", "single").sum().backward()
        >>> z.grad  # ste: the gradient passes unchanged
        tensor([1., 1.])
    """

    generate_vmap_rule = True  # torch.func.vmap/jacrev: forward, setup_context and backward are torch ops

    @staticmethod
    def forward(z, kind, rule, weighted, keep, mode):
        return kind.forward(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        return _backward(ctx, g), None, None, None, None, None


class _ThroughCodesFunction(torch.autograd.Function):
    """A unit traced by ``torch.compile`` under ``memory="packed"``: ``h = decode(unpack(pack(codes(z))))``.

    The forward is bitwise the unit's (NaN where ``z`` is NaN); the backward is the unit's own, on ``z``
    (see :mod:`lightning_ftprop.compiled`). Inputs: ``(z, kind, rule, weighted, mode)``.
    """

    @staticmethod
    def forward(z, kind, rule, weighted, mode):
        planes = compiled.pack_planes(compiled.codes(z, kind), kind.bits)
        h = compiled.decode(compiled.unpack_planes(planes, z.numel()), kind, z.dtype).view(z.shape)
        return torch.where(torch.isnan(z), z, h)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, ctx.kind, ctx.rule, ctx.weighted, ctx.mode = inputs
        ctx.save_for_backward(z)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return _backward_from_z(g, z, ctx.rule, ctx.weighted, ctx.kind, ctx.mode), None, None, None, None


#: The oldest torch whose ``torch.compile`` keeps the units' backward. Under torch 2.11 a compiled unit's
#: backward is dropped: resnet18's compiled ``exact`` gradients reach the stem as zeros (measured on the CPU
#: and on an H200, 2026-12-04, benchmarks/prototypes/compile_vs_eager.py), so tracing one there raises.
COMPILE_MIN_TORCH = (2, 12)
_COMPILE_SUPPORTED = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= COMPILE_MIN_TORCH
if not _COMPILE_SUPPORTED:
    warnings.warn(
        f"lightning_ftprop needs torch >= {'.'.join(map(str, COMPILE_MIN_TORCH))} under torch.compile, found "
        f"{torch.__version__}: a compiled model breaks its graph at every threshold unit, which runs eagerly "
        "(this torch drops a compiled unit's backward), and fullgraph=True raises",
        RuntimeWarning,
        stacklevel=2,
    )


def _apply(z: Tensor, kind: UnitKind, rule: Rule, weighted: bool, keep: str, mode: str) -> Tensor:
    """``ThresholdFunction.apply``, or, traced by ``torch.compile`` under ``memory="packed"`` for a weighted
    rule that keeps ``z`` (``keep="input"``), the same unit computed through its codes."""
    if torch.compiler.is_compiling() and not _COMPILE_SUPPORTED:
        raise RuntimeError(
            f"torch.compile of a threshold unit needs torch >= {'.'.join(map(str, COMPILE_MIN_TORCH))}, found "
            f"{torch.__version__}: this torch drops the unit's backward (zero gradients). Upgrade torch, or train "
            "this model without torch.compile"
        )
    if torch.compiler.is_compiling() and compiled.packing_on() and keep == "input":
        return compiled.in_region(_ThroughCodesFunction.apply, z, kind, rule, weighted, mode)
    return ThresholdFunction.apply(z, kind, rule, weighted, keep, mode)


def output_kind(node) -> Optional[UnitKind]:
    """The :class:`~lightning_ftprop.kinds.UnitKind` of autograd node ``node`` when it is a threshold unit's; else None.

    This is how :mod:`lightning_ftprop.memory` recognises a threshold output from its ``grad_fn``.

    >>> output_kind(sign(torch.randn(3, requires_grad=True)).grad_fn)
    SignKind()
    >>> output_kind(qrelu(torch.randn(3, requires_grad=True), thresholds=5).grad_fn)
    QReLUKind(thresholds=5)
    >>> print(output_kind(torch.randn(3, requires_grad=True).exp().grad_fn))
    None
    """
    kind = getattr(node, "kind", None)
    return kind if isinstance(kind, UnitKind) and isinstance(node, torch.autograd.function.BackwardCFunction) else None


# --- public functional API -------------------------------------------------------------------------


def _check_input(z: Tensor, name: str) -> None:
    if not isinstance(z, Tensor):
        raise TypeError(f"{name}() expects a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(
            f"{name}() needs a floating-point tensor, got dtype {z.dtype}; allowed: float16, bfloat16, float32, float64"
        )


def check_mode(mode: str, kind: Optional[UnitKind] = None) -> str:
    """Validate a backward mode (of ``kind``: one threshold has ``"single"`` only).

    >>> check_mode("per_threshold", SignKind())
    Traceback (most recent call last):
    ValueError: unknown mode 'per_threshold' for sign; valid modes are: single
    """
    modes = QRELU_MODES if kind is None else kind.modes
    if mode not in modes:
        where = "qrelu" if kind is None else kind.name
        raise ValueError(f"unknown mode {mode!r} for {where}; valid modes are: {', '.join(modes)}")
    return mode


def check_keep(keep: str) -> str:
    """Validate what a unit's backward keeps, ``keep`` (see the module docstring).

    >>> check_keep("uint8")
    'uint8'
    """
    if keep not in KEEP_FORMS:
        raise ValueError(f"unknown keep form {keep!r}; valid forms are: {', '.join(KEEP_FORMS)}")
    return keep


def sign(z: Tensor, rule: Union[str, Rule] = DEFAULT_RULE, weighted: bool = True, keep: str = "input") -> Tensor:
    """``sign(z)`` in {-1, +1} with an FTPROP-MB backward under ``rule``.

    Example:
        >>> import torch
        >>> z = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
        >>> h = sign(z, "sste")
        >>> h.backward(torch.ones(4))  # g = dL/dh = 1 everywhere
        >>> h.detach(), z.grad  # sste passes g where |z| <= 1
        (tensor([-1., -1.,  1.,  1.]), tensor([0., 1., 1., 0.]))
    """
    _check_input(z, "sign")
    return _apply(z, _SIGN, get_rule(rule), bool(weighted), check_keep(keep), "single")


def step(z: Tensor, rule: Union[str, Rule] = DEFAULT_RULE, weighted: bool = True, keep: str = "input") -> Tensor:
    """``1[z > 0]`` in {0, 1} with an FTPROP-MB backward under ``rule``.

    Example:
        >>> import torch
        >>> z = torch.tensor([-0.5, 0.0, 0.5], requires_grad=True)
        >>> h = step(z)  # the soft hinge: backward g * (1 - tanh(z)^2)
        >>> h.backward(torch.tensor([1.0, -1.0, 0.0]))
        >>> h.detach(), z.grad
        (tensor([0., 0., 1.]), tensor([ 0.7864, -1.0000,  0.0000]))
    """
    _check_input(z, "step")
    return _apply(z, _STEP, get_rule(rule), bool(weighted), check_keep(keep), "single")


def qrelu(
    z: Tensor,
    rule: Union[str, Rule] = DEFAULT_RULE,
    weighted: bool = True,
    thresholds: int = 3,
    mode: str = "single",
    keep: str = "input",
) -> Tensor:
    """Quantized ReLU ``clip(ceil((n-1) z), 0, n) / n`` with ``n = thresholds``, with an FTPROP-MB backward.

    >>> qrelu(torch.tensor([-1.0, 0.2, 0.6, 2.0]), thresholds=3)
    tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """
    _check_input(z, "qrelu")
    kind = _qrelu_kind(check_thresholds(thresholds))
    return _apply(z, kind, get_rule(rule), bool(weighted), check_keep(keep), check_mode(mode, kind))


def threshold(
    z: Tensor,
    kind: UnitKind,
    rule: Union[str, Rule] = DEFAULT_RULE,
    weighted: bool = True,
    mode: str = "single",
    keep: str = "input",
) -> Tensor:
    """The unit of any :class:`~lightning_ftprop.kinds.UnitKind` (sign, step and qrelu are this with their kinds).

    >>> threshold(torch.tensor([-0.5, 0.5]), StepKind())
    tensor([0., 1.])
    """
    if not isinstance(kind, UnitKind):
        raise TypeError(f"kind must be a lightning_ftprop.kinds.UnitKind, got {kind!r}")
    _check_input(z, kind.name)
    return _apply(z, kind, get_rule(rule), bool(weighted), check_keep(keep), check_mode(mode, kind))


_SIGN, _STEP = SignKind(), StepKind()
_qrelu_kind = memoised(QReLUKind)  # one kind per n: functional.qrelu is called on every forward
