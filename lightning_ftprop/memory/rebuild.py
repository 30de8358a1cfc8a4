"""Rebuild a unit's ``z`` in its backward from what autograd keeps anyway, instead of keeping it.

A unit whose rule reads ``z`` (``soft_hinge``, ``hinge``, ``log_loss``; ``sste``) keeps ``z`` for
its backward, 32 bits per element. Very often ``z`` is the output of a cheap tail whose inputs other
nodes of the graph keep for their own backward. Under :func:`lightning_ftprop.memory.packed` the unit
then keeps only references to those nodes and rebuilds ``z`` in its backward, in one pass:

=================================  ==========================================  ==========================================
``z`` is                           rebuilt as                                  from
=================================  ==========================================  ==========================================
``BatchNorm(x)`` (training)        ``x * alpha + beta`` per channel, with      BatchNorm's saved input, batch mean,
                                   ``alpha = invstd * weight`` and ``beta =    ``invstd`` and weight; the bias (a copy
                                   bias - mean * alpha`` (the CPU kernel's     of ``C`` numbers)
                                   own arithmetic)
``max_pool2d/3d(x)``               ``x`` gathered at the saved argmax          the max-pool's saved input and indices
``a + b`` (``+``, ``+=``)          ``a' + b'``                                 each side rebuilt as above, or a threshold
                                                                               output that a later layer keeps packed
                                                                               (a residual block's identity)
=================================  ==========================================  ==========================================

Exactness (the contract of docs/memory.md). The rebuild uses the saved tensors of the device's own
BatchNorm (its input, batch mean and ``invstd``) and computes ``x * alpha + beta`` in float32 (for
half and bfloat16 inputs too; float64 for float64), rounded to ``z``'s dtype. On the CPU that is the kernel's own transform,
run as an evaluation-mode BatchNorm with mean 0 and variance 1, so the rebuilt ``z`` is bitwise the
forward's (float32 and bfloat16); elsewhere it is ``addcmul(beta, x, alpha)``, which on any other kernel
(a GPU's, cuDNN's) equals ``z`` within the rounding of ``z``'s dtype. When ``z`` is made,
:func:`check` compares the rebuild of its first sample with ``z[:1]``: ``"bitwise"``, ``"rounding"``
(within 8 ulps of the sample's largest value) or a failure (the unit keeps ``z``). A rule whose
backward jumps (``sste``, ``hinge``) uses a rebuild only when it is bitwise, so a rounding error can
never move a unit across an edge; smooth rules (``soft_hinge``, ``log_loss``) accept rounding.

Under ``create_graph=True`` (double backward: gradient penalties, Hessian-vector products) the unit's
backward runs with grad mode on and asks for a *differentiable* rebuild (``run(differentiable=True)``):
BatchNorm is run again on its saved input, with its weight and bias (the same kernel: the same values),
and a max-pool's output is gathered from its saved input, both with their autograd history, so the
second-order terms through ``z`` are kept. A packed threshold output has no history to give back: a
double backward through a ``z`` rebuilt from one (a residual block's last unit) raises, naming
``memory="exact"``. A ``z`` that needs a matmul to rebuild (``Linear -> unit``, a transformer MLP) is
kept: that is what ``memory="recompute"`` is for.

The unit holds the graph node (which frees its saved tensors after its own backward, which runs after
the unit's) and a weak reference to a packed identity (kept alive by the layer that saved it until
that layer's backward, also after the unit's), so a rebuild holds no memory of its own.

>>> import torch
>>> from torch import nn
>>> from lightning_ftprop.memory import rebuild
>>> bn = nn.BatchNorm1d(4)
>>> z = bn(torch.randn(8, 4, requires_grad=True))
>>> recipe = rebuild.plan(z)
>>> recipe.describe()
'BatchNorm'
>>> torch.equal(recipe.run(), z.detach())
True
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from lightning_ftprop import torch_private

__all__ = ["ZRecipe", "plan", "check", "why_not", "PACKED_TAG", "ROUNDING_ULPS"]

#: Key of ``grad_fn.metadata`` under which :func:`~lightning_ftprop.memory.pack` records the packed form of
#: a threshold output: ``(output_nr, weakref to the PackedTensor, the unpack function that decodes it)``.
PACKED_TAG = "lightning_ftprop.packed"

_MAX_DEPTH = 4
# The BatchNorm nodes of eager mode: the native kernel (CPU, and CUDA without cuDNN), cuDNN and MIOpen.
_BATCH_NORMS = frozenset({"NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0"})
_MAX_POOLS = frozenset({"MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0"})


class ZRecipe:
    """How to rebuild one tensor: ``run()`` returns it (or its first ``k`` samples).

    :func:`plan` builds one from ``z``'s graph; ``describe()`` names where it rebuilds ``z`` from. A
    residual sum of a max-pool and a BatchNorm:

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(2, 2, 4, 4, requires_grad=True)
    >>> z = nn.functional.max_pool2d(x, 1) + nn.BatchNorm2d(2)(x)
    >>> recipe = plan(z)
    >>> isinstance(recipe, ZRecipe), recipe.describe()
    (True, 'max-pool + BatchNorm')
    >>> torch.equal(recipe.run(1), z.detach()[:1])   # the check made in the forward: the first sample
    True
    >>> torch.equal(recipe.run(), z.detach())        # the backward's rebuild: all of z, bitwise
    True
    """

    def run(self, k: Optional[int] = None, differentiable: bool = False) -> Tensor:  # pragma: no cover - abstract
        """All of the tensor, or its first ``k`` samples; ``differentiable``: with its autograd history."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def signature(self) -> tuple:  # pragma: no cover - abstract
        """What decides the rebuild's arithmetic: each step's code and kernel, and its input's dtype,
        device, shape and strides. :func:`check` judges a signature once."""
        raise NotImplementedError


def _first(x: Tensor, k: Optional[int]) -> Tensor:
    return x if k is None else x[:k]


class _BatchNorm(ZRecipe):
    """``z = BatchNorm(x)`` in training mode, from the BatchNorm node's saved tensors.

    ``bias`` is a copy of the bias made in the forward (``C`` numbers); ``parameter`` the live bias, for
    the differentiable rebuild. The per-channel ``alpha`` and ``beta`` are computed once per recipe, at its
    first run (the check in the forward, or else the backward's rebuild), and kept (``2 C`` numbers).
    """

    def __init__(self, node, bias: Optional[Tensor], parameter: Optional[Tensor]):
        self.node, self.bias, self.parameter = node, bias, parameter
        self._affine: Optional[Tuple[Tensor, Tensor]] = None

    def _coefficients(self) -> Tuple[Tensor, Tensor]:
        """``alpha = invstd * weight`` and ``beta = bias - mean * alpha`` (rounded once: fma), in the kernels'
        arithmetic: float64 for a float64 input, float32 otherwise."""
        if self._affine is None:
            node = self.node
            mean, invstd, weight = _saved(node, "result1"), _saved(node, "result2"), _saved(node, "weight")
            wide = torch.float64 if _saved(node, "input").dtype == torch.float64 else torch.float32
            alpha = invstd.to(wide) if weight is None else invstd.to(wide) * weight.detach().to(wide)
            bias = self.bias.to(wide) if self.bias is not None else torch.zeros_like(alpha)
            self._affine = (alpha, torch.addcmul(bias, mean.to(wide), alpha, value=-1))
        return self._affine

    def run(self, k: Optional[int] = None, differentiable: bool = False) -> Tensor:
        node = self.node
        if differentiable:  # the same kernel on the same input: the forward's values, with their history
            x, weight = _saved(node, "input"), _saved(node, "weight")
            eps = _saved(node, "eps") if hasattr(node, "_saved_eps") else _saved(node, "epsilon")
            return torch.batch_norm(
                _first(x, k), weight, self.parameter, None, None, True, 0.0, eps, torch.backends.cudnn.enabled
            )
        with torch.no_grad():
            x = _first(_saved(node, "input").detach(), k)
            alpha, beta = self._coefficients()
            if x.device.type == "cpu":
                # The CPU kernel's own transform, x * alpha + beta per channel in one vectorised pass: an
                # evaluation-mode BatchNorm with mean 0, variance 1 and eps 0 (its invstd is exactly 1). A
                # broadcasting addcmul computes the same fma, three times slower (two operands of stride 0).
                unit = _unit_statistics(alpha)
                return torch.batch_norm(x, alpha, beta, unit[0], unit[1], False, 0.0, 0.0, False)
            shape = [1, -1] + [1] * (x.dim() - 2)
            if x.dtype == torch.float32:
                return torch.addcmul(beta.view(shape), x, alpha.view(shape))  # fma(x, alpha, beta)
            # half and bfloat16: float32 arithmetic (the kernels' opmath), rounded once on writing to z
            z = torch.empty_like(x)
            return torch.addcmul(beta.view(shape), x, alpha.view(shape), out=z)

    def describe(self) -> str:
        return "BatchNorm"

    def signature(self) -> tuple:
        weight = _saved(self.node, "weight")
        node = self.node
        return (type(self).run, node.name(), _tensor_key(_saved(node, "input")), self.bias is None, weight is None)


def _unit_statistics(alpha: Tensor) -> Tuple[Tensor, Tensor]:
    """Running mean 0 and variance 1 for ``alpha``'s channels (cached per size, dtype and device; never written)."""
    key = (alpha.numel(), alpha.dtype, alpha.device)
    if key not in _UNIT_STATISTICS:
        _UNIT_STATISTICS[key] = (torch.zeros_like(alpha), torch.ones_like(alpha))
    return _UNIT_STATISTICS[key]


_UNIT_STATISTICS: dict = {}


def _saved(node, name: str):
    return torch_private.saved_attribute(node, name)


def _tensor_key(x: Tensor) -> tuple:
    return (x.dtype, x.device, tuple(x.shape), x.stride())


class _Rebuilding(threading.local):
    depth = 0


_REBUILDING = _Rebuilding()


def rebuilding() -> bool:
    """True while a backward rebuilds ``z`` in this thread (the unpack of int indices keeps them for the owner)."""
    return _REBUILDING.depth > 0


class _MaxPool(ZRecipe):
    """``z = max_pool(x)``: each output is the input value at the pool's saved argmax (copied, so exact).

    The check in the forward runs the same max-pool on the first sample (decoding the saved indices
    there would cost a pass over all of them).
    """

    def __init__(self, node):
        self.node = node

    def run(self, k: Optional[int] = None, differentiable: bool = False) -> Tensor:
        node = self.node
        with torch.set_grad_enabled(differentiable):
            x = _first(_saved(node, "self"), k)
            x = x if differentiable else x.detach()
            if k is not None:  # the check, in the forward: the same max-pool of the first samples
                op = torch.ops.aten.max_pool2d_with_indices if x.dim() <= 4 else torch.ops.aten.max_pool3d_with_indices
                args = [_saved(node, name) for name in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")]
                return op(x, *args)[0]
            _REBUILDING.depth += 1  # hand the decoded indices on to the max-pool's own backward (next)
            try:
                index = _saved(node, "result1")
            finally:
                _REBUILDING.depth -= 1
            return x.flatten(2).gather(2, index.flatten(2)).view(index.shape)

    def describe(self) -> str:
        return "max-pool"

    def signature(self) -> tuple:
        return (type(self).run, self.node.name(), _tensor_key(_saved(self.node, "self")))


class _PackedInput(ZRecipe):
    """A threshold output that another layer keeps packed (``ref`` is a weak reference to the packed form,
    ``unpack`` the function that decodes it: hooks' own, handed over in the tag, so this module needs no import of it)."""

    def __init__(self, ref: weakref.ref, unpack: Callable[..., Tensor]):
        self.ref, self.unpack = ref, unpack

    def run(self, k: Optional[int] = None, differentiable: bool = False) -> Tensor:
        if differentiable:
            raise RuntimeError(
                "double backward (create_graph=True) through a threshold unit whose z is rebuilt from a packed "
                "threshold output (a residual block's last unit) under memory='packed': the packed bits carry no "
                "autograd history, so the second-order terms through them would be lost. Train this step with "
                "memory='exact' (FTPropCallback(..., memory='exact')), which keeps z"
            )
        stored = self.ref()
        if stored is None:
            raise RuntimeError("the packed threshold output a unit rebuilds z from was freed before its backward")
        return self.unpack(stored, samples=k)

    def describe(self) -> str:
        return "packed threshold output"

    def signature(self) -> tuple:
        stored = self.ref()
        return (type(self).run, self.unpack) + (
            (stored.form, stored.unit_kind, stored.dtype) if stored is not None else ()
        )


class _Add(ZRecipe):
    def __init__(self, left: ZRecipe, right: ZRecipe):
        self.left, self.right = left, right

    def run(self, k: Optional[int] = None, differentiable: bool = False) -> Tensor:
        left, right = self.left.run(k, differentiable), self.right.run(k, differentiable)
        return left + right if differentiable else left.add_(right)  # each run returns a new tensor

    def describe(self) -> str:
        return f"{self.left.describe()} + {self.right.describe()}"

    def signature(self) -> tuple:
        return (type(self).run, self.left.signature(), self.right.signature())


def _recipe(node, output_nr: int, depth: int) -> Optional[ZRecipe]:
    if node is None or depth > _MAX_DEPTH:
        return None
    tag = node.metadata.get(PACKED_TAG) if hasattr(node, "metadata") else None
    if tag is not None and tag[0] == output_nr and tag[1]() is not None:
        return _PackedInput(tag[1], tag[2])
    name = type(node).__name__
    if output_nr != 0:
        return None
    if name in _BATCH_NORMS:
        training = getattr(node, "_saved_training", None)  # cuDNN's node has none: its batch mean is empty in eval
        if training is False or _saved(node, "result1").numel() == 0:
            return None
        edge = node.next_functions[2][0] if len(node.next_functions) > 2 else None
        if edge is not None and hasattr(edge, "variable"):
            parameter = edge.variable
            bias = parameter.detach().clone()  # C numbers; a copy, so a later in-place update changes nothing
        elif _saved(node, "weight") is None:
            bias = parameter = None  # affine=False (a frozen bias would fail the check and keep z)
        else:
            return None  # a weight but no reachable bias: frozen, or none; keep z
        return _BatchNorm(node, bias, parameter)
    if name in _MAX_POOLS:
        return _MaxPool(node)
    if name == "AddBackward0" and _saved(node, "alpha") == 1:
        (left, left_nr), (right, right_nr) = node.next_functions
        a = _recipe(left, left_nr, depth + 1)
        b = _recipe(right, right_nr, depth + 1) if a is not None else None
        return _Add(a, b) if b is not None else None
    return None


def plan(z: Tensor) -> Optional[ZRecipe]:
    """How to rebuild ``z`` from what autograd keeps anyway, or None. Not checked: see ``check``.

    In ``conv -> BN -> unit`` the unit's ``z`` is BatchNorm's output, rebuilt from BatchNorm's saved
    input and statistics; the conv's output would need the conv again:

    >>> import torch
    >>> from torch import nn
    >>> import lightning_ftprop as ftp
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), ftp.Sign(rule="soft_hinge"))
    >>> x = torch.randn(2, 1, 5, 5)
    >>> z = net[:2](x)                       # what the unit receives
    >>> plan(z).describe()
    'BatchNorm'
    >>> torch.equal(plan(z).run(), z.detach())
    True
    >>> print(plan(net[0](x)))               # a conv's output: no one-pass recipe
    None
    """
    if z.grad_fn is None:
        return None
    try:
        return _recipe(z.grad_fn, z.output_nr, 0)
    except AttributeError as error:  # a node's saved attributes were renamed: keep z
        torch_private.warn_changed("autograd node attributes _saved_*", "threshold units keep z (no rebuild)", error)
        return None


def _same_bits(a: Tensor, b: Tensor) -> bool:
    if torch.equal(a, b):  # one op; NaN (never equal to itself) takes the slower test
        return True
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


#: Rounding tolerance of :func:`check`: ulps of the first sample's largest absolute value.
ROUNDING_ULPS = 8


def check(recipe: ZRecipe, z: Tensor) -> Optional[str]:
    """How ``recipe`` rebuilds the first sample of ``z``: ``"bitwise"``, ``"rounding"`` or None (it does not).

    ``"rounding"``: within :data:`ROUNDING_ULPS` ulps (of ``z``'s dtype) of the sample's largest
    absolute value, NaN where ``z`` has NaN.

    A verdict is a property of the kernels, not of the values: ``"bitwise"`` and ``"rounding"`` are
    remembered per signature (the recipe's steps and kernels, their inputs' dtype, device, shape and
    strides, and ``z``'s: :meth:`ZRecipe.signature`), so each layer is checked in its first step only,
    and later steps skip the check and, on a GPU, its read-back to the host. A failure is not remembered.

    >>> import torch
    >>> from torch import nn
    >>> z = nn.BatchNorm1d(4)(torch.randn(8, 4, requires_grad=True))
    >>> check(plan(z), z)                    # the CPU kernel's own arithmetic
    'bitwise'
    """
    if z.dim() == 0 or z.shape[0] == 0:
        return None
    try:
        key = (recipe.signature(), _tensor_key(z))
        verdict = _VERDICTS.get(key)
        if verdict is not None:
            return verdict
        verdict = _check(recipe, z)
    except AttributeError as error:  # a node's saved attributes were renamed: keep z
        torch_private.warn_changed("autograd node attributes _saved_*", "threshold units keep z (no rebuild)", error)
        return None
    if verdict is not None:
        if len(_VERDICTS) >= _MAX_VERDICTS:  # shapes that keep changing (variable sequence lengths)
            _VERDICTS.clear()
        _VERDICTS[key] = verdict
    return verdict


#: Remembered verdicts of :func:`check`, per signature (at most ``_MAX_VERDICTS``).
_VERDICTS: dict = {}
_MAX_VERDICTS = 4096


def _check(recipe: ZRecipe, z: Tensor) -> Optional[str]:
    try:  # an AttributeError (renamed saved attributes) goes up to check(), which warns
        with torch.no_grad():
            rebuilt, first = recipe.run(1), z.detach()[:1]
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None
    if rebuilt.shape != first.shape or rebuilt.dtype != first.dtype or rebuilt.device != first.device:
        return None
    if _same_bits(rebuilt, first):
        return "bitwise"
    nan = torch.isnan(first)
    if not torch.equal(nan, torch.isnan(rebuilt)):
        return None
    wide, want = rebuilt.double().masked_fill(nan, 0), first.double().masked_fill(nan, 0)
    tolerance = ROUNDING_ULPS * torch.finfo(z.dtype).eps * float(want.abs().max())
    return "rounding" if float((wide - want).abs().max()) <= tolerance else None


def why_not(z: Tensor) -> str:
    """Why ``z`` cannot be rebuilt cheaply (for ``summary``): what made it.

    >>> import torch
    >>> from torch import nn
    >>> why_not(nn.Linear(3, 4)(torch.randn(2, 3)))       # Linear -> unit
    "z comes from a matmul (AddmmBackward0); memory='recompute' rebuilds it"
    >>> why_not(torch.tanh(torch.randn(2, 3, requires_grad=True)))
    'z comes from TanhBackward0, which keeps nothing z can be rebuilt from in one pass'
    >>> why_not(torch.randn(2, 3))
    'z is an input of the graph'
    """
    node = z.grad_fn
    if node is None:
        return "z is an input of the graph"
    name = node.name()
    if any(op in name for op in ("Addmm", "Mm", "Bmm", "Convolution", "Linear", "Matmul", "Baddbmm")):
        return f"z comes from a matmul ({name}); memory='recompute' rebuilds it"
    return f"z comes from {name}, which keeps nothing z can be rebuilt from in one pass"
