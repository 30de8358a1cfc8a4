"""Training memory: keep threshold outputs as bits between the forward and the backward.

A threshold unit's output ``h`` takes one of ``levels`` values (see :mod:`lightning_ftprop.nn`), so
any tensor that a later layer saves for its backward (a conv's input, a linear's input, a max-pool's
input) is stored exactly in ``bits = ceil(log2(levels))`` bits per element instead of 32:

    code(h) = 1[h > 0]                  sign, step            h = 2 code - 1  /  h = code
    code(h) = round(n h)                qrelu, n = steps      h = code / n

Three memory modes, from most to least held memory:

* ``"exact"``: plain autograd; every saved tensor as it is.
* ``"packed"``: :func:`packed`, a context manager used like ``torch.autograd.graph.save_on_cpu``.
  Inside it every saved tensor that is a threshold output (or a max-pool, view or transpose of one)
  is bit-packed, a saved ``bool`` mask is bit-packed, and a saved ``int64`` tensor (max-pool indices)
  is kept in the smallest integer type that holds its range. The units' own state is compact too:
  ``ste`` keeps nothing, ``sste`` keeps the 1-bit mask ``1[|u| <= 1]``, other rules keep their
  ``saved=`` form. Everything is lossless, so the gradients are bitwise identical to ``"exact"``.
* ``"recompute"``: :func:`recompute` on the model, then training under :func:`packed`. Each segment
  between threshold units (``conv -> BN -> pool -> unit``) runs under non-reentrant
  ``torch.utils.checkpoint`` and keeps only its input, packed; the backward recomputes the segment
  from those bits. ``z`` is recomputed exactly, so every rule, ``soft_hinge`` included, keeps its
  exact gradient (equal to ``"exact"`` up to float reassociation; in practice bitwise).

What can be segmented: the children of every ``nn.Sequential`` are cut after each child that is or
contains a threshold unit, so ``[conv, pool, unit]`` is a segment and a residual block whose output
is a unit output (torchvision's ``BasicBlock``) is one segment. Units called from another module's
own ``forward`` (torchvision ResNet's stem ``relu``) stay un-recomputed (still packed), and
:func:`recompute` names them in one warning.

A threshold output that holds a NaN is kept as it is (no code stores NaN).

Lossless caveat: packing stores values, not the sign of a zero. A qrelu output can hold ``-0.0``
(``ceil`` of a small negative number); it comes back as ``+0.0``, which changes no non-zero number
in any gradient (adding ``+-0`` to a non-zero sum is exact).
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
import warnings
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lightning_ftprop import functional as F
from lightning_ftprop.nn import ThresholdUnit
from lightning_ftprop.rules import get_rule

__all__ = [
    "MEMORY_MODES",
    "check_memory",
    "pack_bits",
    "unpack_bits",
    "pack",
    "unpack",
    "packed",
    "recompute",
    "MemoryMode",
    "DEFAULT_MEMORY",
    "recomputing",
]

#: The valid ``memory=`` values, from most to least held memory.
MEMORY_MODES: Tuple[str, ...] = ("exact", "packed", "recompute")


#: The default of ``FTPropCallback(memory=...)`` and of the spec's ``memory`` key. ``"packed"``
#: because it changes no bit of any gradient, costs 1.05-1.12x the exact step time (CPU), and holds
#: 0.50x (resnet18) to 0.71x (alexnet_dorefa) of the ReLU network's memory where ``"exact"`` holds
#: 1.15-1.42x (benchmarks/RESULTS.md, section 5). ``"recompute"`` holds far less but re-runs every
#: segment's forward (1.41-1.61x the ReLU step time on the CPU), a cost users should opt into.
DEFAULT_MEMORY = "packed"


def check_memory(memory: str) -> str:
    """Validate a memory mode (one of :data:`MEMORY_MODES`): TypeError for a non-string, ValueError otherwise."""
    if not isinstance(memory, str):
        raise TypeError(f"memory must be a string, one of {', '.join(MEMORY_MODES)}; got {memory!r}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory!r}; valid modes are: {', '.join(MEMORY_MODES)}")
    return memory


# --- bit packing -----------------------------------------------------------------------------------
#
# Eight 0/1 values b_0..b_7 become one byte sum_k b_k 2^k, computed as a matrix-vector product with
# (1, 2, ..., 128): the sums are integers below 256, exact in every float type. Unpacking looks each
# byte up in a 256 x 8 table. Both are single vectorised passes (and plain torch ops under compile).

_TABLES: dict = {}


def _weights(dtype: torch.dtype, device: torch.device) -> Tensor:
    key = ("w", dtype, device)
    if key not in _TABLES:
        _TABLES[key] = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=dtype, device=device)
    return _TABLES[key]


def _table(values: Tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """256 x 8: row ``b`` holds ``values[bit k of b]`` for k = 0..7."""
    key = (values, dtype, device)
    if key not in _TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _TABLES[key] = torch.tensor(values, dtype=torch.float64)[bits].to(dtype=dtype, device=device)
    return _TABLES[key]


def _bytes(flat: Tensor, low: float, nan_check: bool = False) -> Optional[Tensor]:
    """Pack a flat tensor whose values are ``low`` or ``low + 1`` (``low`` is 0 or -1), 8 per byte.

    With ``nan_check``, None when ``flat`` holds a NaN (which no byte can store).
    """
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_full((pad,), low)])
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)
    sums = torch.mv(flat.view(-1, 8), _weights(flat.dtype, flat.device))
    if nan_check and bool(torch.isnan(sums).any()):
        return None
    if low:  # values -1/+1: sum of (2 b_k - 1) 2^k = 2 byte - 255
        sums = sums.add_(255).div_(2)
    return sums.to(torch.uint8)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into bit planes: a uint8 tensor ``(bits, ceil(N / 8))``.

    Bit ``j`` of code ``i`` is bit ``i % 8`` of byte ``planes[j, i // 8]``.
    """
    flat = codes.reshape(-1)
    if bits == 1:
        return _bytes(flat, 0).unsqueeze(0)
    flat = flat.to(torch.uint8)
    return torch.stack([_bytes((flat >> j) & 1, 0) for j in range(bits)])


def unpack_bits(planes: Tensor, numel: int) -> Tensor:
    """The inverse of :func:`pack_bits`: the first ``numel`` codes as a flat uint8 tensor."""
    table = _table((0, 1), torch.uint8, planes.device)
    codes = None
    for j in range(planes.shape[0]):
        plane = table.index_select(0, planes[j].long()).view(-1)[:numel]
        codes = plane if codes is None else codes.bitwise_or_(plane << j)
    return codes


# --- alphabets: which saved tensors are threshold outputs ------------------------------------------

# Autograd nodes whose output holds only values of their (single) input: a max-pool, views, copies.
_VALUE_PRESERVING = frozenset(
    {
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "TBackward0",
        "TransposeBackward0",
        "TransposeBackward1",
        "PermuteBackward0",
        "CloneBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "SqueezeBackward2",
        "UnsqueezeBackward0",
        "MaxPool1DWithIndicesBackward0",
        "MaxPool2DWithIndicesBackward0",
        "MaxPool3DWithIndicesBackward0",
        "AdaptiveMaxPool1DBackward0",
        "AdaptiveMaxPool2DBackward0",
        "AdaptiveMaxPool3DBackward0",
    }
)
_SEARCH_DEPTH = 8


def _levels(x: Tensor) -> Optional[int]:
    """``n`` when ``x`` is exactly a threshold output: 0 for sign, 1 for step, ``steps`` for qrelu."""
    node = x.grad_fn
    for _ in range(_SEARCH_DEPTH):
        if node is None:
            return None
        if isinstance(node, F.SignFunction._backward_cls):
            return 0
        if isinstance(node, F.StepFunction._backward_cls):
            return 1
        if isinstance(node, F.QReLUFunction._backward_cls):
            return node.steps
        if type(node).__name__ not in _VALUE_PRESERVING:
            return None
        node = node.next_functions[0][0]
    return None


def _encode(x: Tensor, n: int) -> Tuple[Optional[Tensor], int]:
    """``(codes, bits)`` of a qrelu output with ``n`` steps; codes None if ``x`` holds a NaN."""
    wide = x.float() if x.element_size() < 4 else x  # round(n h) must be exact
    scaled = torch.mul(wide, n).round_()
    if bool(torch.isnan(scaled).any()):
        return None, 0
    return scaled.to(torch.uint8), max(1, math.ceil(math.log2(n + 1)))


def _decode(codes: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    values = codes.to(dtype)
    if n == 0:
        return values.mul_(2).sub_(1)
    return values if n == 1 else values.div_(n)


def _dense(x: Tensor) -> bool:
    """Non-overlapping and dense: ``empty_strided`` with ``x``'s strides can hold it."""
    if x.is_contiguous():
        return True
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return x.permute(order).is_contiguous()


class _Packed:
    """A saved tensor in compact form; :func:`unpack` rebuilds it with its shape, strides and dtype."""

    __slots__ = ("data", "kind", "n", "shape", "stride", "dtype")

    def __init__(self, data: Tensor, kind: str, n: int, like: Tensor):
        self.data, self.kind, self.n = data, kind, n
        self.shape, self.stride, self.dtype = like.shape, like.stride(), like.dtype


_MAX_ALPHABET = 255  # codes are uint8


def pack(x: Tensor):
    """The compact form of a saved tensor, or ``x`` itself when nothing exact is smaller.

    * a threshold output (found through ``x.grad_fn``, see :data:`_VALUE_PRESERVING`) -> its codes;
    * a ``bool`` tensor -> 1 bit per element;
    * an ``int64`` tensor -> the smallest of int8/int16/int32 that holds its range.
    """
    if x.layout != torch.strided or x.numel() == 0 or not _dense(x):
        return x
    if x.dtype == torch.bool:
        return _Packed(_bytes(x.reshape(-1).view(torch.uint8), 0), "bool", 1, x)
    if x.dtype == torch.int64:
        if x.numel() < 64:
            return x
        lo, hi = torch.aminmax(x)
        lo, hi = int(lo), int(hi)
        for small in (torch.int8, torch.int16, torch.int32):
            info = torch.iinfo(small)
            if info.min <= lo and hi <= info.max:
                return _Packed(x.to(small), "int", 0, x)
        return x
    if x.is_floating_point():
        n = _levels(x)
        if n is None or n > _MAX_ALPHABET:
            return x
        values = x.detach()
        if n <= 1:  # sign: -1/+1, step: 0/1
            data = _bytes(values.reshape(-1), -1 if n == 0 else 0, nan_check=True)
            return x if data is None else _Packed(data, "unit", n, x)
        codes, bits = _encode(values, n)
        return x if codes is None else _Packed(pack_bits(codes, bits), "unit", n, x)
    return x


def unpack(saved) -> Tensor:
    """The inverse of :func:`pack`: bitwise the values that were packed, with the same strides."""
    if not isinstance(saved, _Packed):
        return saved
    numel = math.prod(saved.shape)
    data = saved.data
    if saved.kind == "int":
        flat = data.to(saved.dtype)
    elif saved.kind == "bool" or saved.n <= 1:  # one bit per value: look the values up, 8 at a time
        values = (False, True) if saved.kind == "bool" else (-1, 1) if saved.n == 0 else (0, 1)
        dtype = torch.bool if saved.kind == "bool" else saved.dtype
        table = _table(values, torch.uint8 if dtype == torch.bool else dtype, data.device)
        flat = table.index_select(0, data.reshape(-1).long()).view(-1)[:numel]
        flat = flat.view(torch.bool) if dtype == torch.bool else flat
    else:
        flat = _decode(unpack_bits(data, numel), saved.n, saved.dtype)
    if flat.dim() != 1 or flat.numel() != numel:
        flat = flat.reshape(-1)
    values = flat.view(saved.shape)
    if values.stride() == saved.stride or numel <= 1:
        return values
    out = torch.empty_strided(saved.shape, saved.stride, dtype=saved.dtype, device=flat.device)
    return out.copy_(values)


# --- the units' own state: sste keeps a 1-bit mask ---------------------------------------------------

_SSTE = get_rule("sste")


def _save_mask(ctx, z: Tensor, rule, weighted: bool, saved: str, steps: int, mode: str) -> bool:
    """The hook of :func:`lightning_ftprop.functional._save` under :func:`packed`.

    For ``sste`` (weighted, one coordinate ``u``) the backward is ``g * s(u)`` with the 0/1 surrogate
    ``s(u) = 1[|u| <= 1]``, so the unit keeps ``s(u)`` packed to 1 bit, computed by the rule's own
    ``fused(1, u)``, and its backward is ``threshold_backward(g, s, 0)`` (bitwise the exact one, NaN
    included). Other rules: no change.
    """
    if rule is not _SSTE or not weighted or (steps and mode != "single"):
        return False
    ones = torch.ones((), dtype=z.dtype, device=z.device).expand_as(z)
    if steps:  # qrelu: the window tested on z itself, exactly as the exact backward does
        surrogate = F._window_backward(ones, z, rule.window, steps, mode)
    else:
        surrogate = rule.fused(ones, z)
    ctx.compact = True
    ctx.mask_backward = functools.partial(_mask_backward, z.shape, z.dtype)
    ctx.save_for_backward(_bytes(surrogate.reshape(-1), 0))
    return True


def _mask_backward(shape: torch.Size, dtype: torch.dtype, data: Tensor, g: Tensor) -> Tensor:
    """``g * s`` for a 0/1 surrogate ``s`` kept by :func:`_save_mask`; zeros are +0.0 as in the exact backward."""
    table = _table((0, 1), dtype, data.device)
    mask = table.index_select(0, data.long()).view(-1)[: math.prod(shape)].view(shape)
    return torch.ops.aten.threshold_backward(g, mask, 0)


@contextlib.contextmanager
def _unit_hook(hook: Optional[Callable]) -> Iterator[None]:
    previous = F._save_hook
    F._save_hook = hook
    try:
        yield
    finally:
        F._save_hook = previous


@contextlib.contextmanager
def packed() -> Iterator[None]:
    """Store every saved threshold output, mask and index tensor compactly (see the module docstring)::

        with lightning_ftprop.memory.packed():
            loss = criterion(model(x), y)
        loss.backward()          # the backward may run inside or outside the context

    Forward and backward values are unchanged: ``pack`` is lossless. Packing happens when autograd
    saves a tensor (in the forward), unpacking when the backward needs it.

    Raises:
        RuntimeError: inside ``torch.compile`` (saved-tensor hooks cannot be traced there); compile
            the model and train it with ``memory="exact"``, or run the packed model eagerly.
    """
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "lightning_ftprop.memory.packed() cannot run inside torch.compile (saved-tensor hooks are not "
            "traced); call the compiled model inside the context instead, or use memory='exact'"
        )
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), _unit_hook(_save_mask):
        yield


# --- recompute --------------------------------------------------------------------------------------

_SEGMENTS = "_ftprop_segments"  # instance attribute of a segmented nn.Sequential


def _has_units(module: nn.Module) -> bool:
    return any(isinstance(m, ThresholdUnit) for m in module.modules())


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _chain(modules: Sequence[nn.Module], x):
    for module in modules:
        x = module(x)
    return x


_recomputing = [0]  # depth of segment recomputations running now


def recomputing() -> bool:
    """True while a :func:`recompute` segment re-runs its forward inside the backward."""
    return _recomputing[0] > 0


@contextlib.contextmanager
def _keep_running_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore BatchNorm running statistics after a recomputation: the forward already updated them."""
    norms = [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
    ]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in norms]
    _recomputing[0] += 1
    try:
        with _unit_hook(None):
            yield
    finally:
        _recomputing[0] -= 1
        with torch.no_grad():
            for m, buffers in zip(norms, kept):
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, old in zip(live, buffers):
                    b.copy_(old)


def _contexts(modules: Sequence[nn.Module]):
    # Inside a segment the units keep z (the saved tensors are recomputed anyway), in the forward and in
    # the recomputation alike, so that both save the same tensors.
    return _unit_hook(None), _keep_running_stats(modules)


def _run_segment(segment, x):
    if isinstance(segment, nn.Module):  # a nested, itself segmented, nn.Sequential
        return segment(x)
    if not torch.is_grad_enabled():
        return _chain(segment, x)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):  # the segment's input is saved packed
        return torch.utils.checkpoint.checkpoint(
            functools.partial(_chain, segment),
            x,
            use_reentrant=False,
            context_fn=functools.partial(_contexts, segment),
        )


def _segmented_forward(self: nn.Sequential, x):
    """``nn.Sequential.forward`` with each segment recomputed in the backward from its packed input."""
    for segment in self.__dict__[_SEGMENTS]:
        x = _run_segment(segment, x)
    return x


def _segments(sequential: nn.Sequential, plan: Callable) -> List:
    """Cut the children after each child that is or holds a threshold unit."""
    segments: List = []
    current: List[nn.Module] = []
    for name, child in sequential._modules.items():
        if child is None:
            continue
        if _plain_sequential(child) and _has_units(child):
            if current:
                segments.append(current)
                current = []
            plan(child, name)
            segments.append(child)
            continue
        current.append(child)
        if _has_units(child):
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def recompute(model: nn.Module, enable: bool = True) -> List[str]:
    """Make ``model`` recompute the segments between its threshold units in the backward (in place).

    ``recompute(model, enable=False)`` undoes it. Calling it again re-plans the segments (after you
    change the model). Only the ``forward`` of the segmented ``nn.Sequential`` instances changes (an
    instance attribute); parameters, buffers and ``state_dict`` keys stay as they are. Under
    ``torch.no_grad`` the segments run plainly. BatchNorm running statistics are updated once per
    forward, as without recomputation, and dropout draws the same mask (checkpoint restores the RNG).

    Returns:
        The names of the segmented ``nn.Sequential`` modules (``""`` is the model itself).

    Warns:
        UserWarning: once, naming the threshold units that no segment covers (called from a
        ``forward`` other than ``nn.Sequential``'s); they train un-recomputed.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``enable=True`` on a model without threshold units.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recompute() expects an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if _SEGMENTS in module.__dict__:
            del module.__dict__[_SEGMENTS]
            module.__dict__.pop("forward", None)
    if not enable:
        return []
    if not _has_units(model):
        raise ValueError(
            f"recompute() found no threshold unit in {type(model).__name__}; convert it first "
            "(lightning_ftprop.convert) - there is nothing to recompute from packed bits"
        )
    segmented: List[str] = []
    uncovered: List[str] = []
    seen = set()

    def plan(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, ThresholdUnit):
            uncovered.append(name or type(module).__name__)
        elif not _has_units(module):
            return
        elif _plain_sequential(module):
            segments = _segments(module, lambda child, child_name: plan(child, _join(name, child_name)))
            module.__dict__[_SEGMENTS] = segments
            module.__dict__["forward"] = types.MethodType(_segmented_forward, module)
            segmented.append(name)
        else:
            for child_name, child in module._modules.items():
                if child is not None:
                    plan(child, _join(name, child_name))

    plan(model, "")
    if uncovered:
        warnings.warn(
            f"recompute(): {len(uncovered)} threshold unit(s) are called from a forward other than "
            f"nn.Sequential's, so no segment covers them; they train un-recomputed (still packed). Group "
            f"each with the layers before it in an nn.Sequential to cover it. Not covered: {', '.join(uncovered)}",
            UserWarning,
            stacklevel=2,
        )
    return segmented


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


# --- per-step application (what the Lightning callback and mixin use) --------------------------------


class MemoryMode:
    """Applies one memory mode to a model, step by step.

    mode = MemoryMode("recompute")
    mode.prepare(model)        # recompute(model) for "recompute"; idempotent
    mode.begin_step()          # enters packed() for "packed" and "recompute"
    ...forward and backward...
    mode.end_step()
    """

    def __init__(self, memory: str = "exact"):
        self.memory = check_memory(memory)
        self._stack: Optional[contextlib.ExitStack] = None

    def prepare(self, model: nn.Module) -> List[str]:
        """Segment ``model`` for ``"recompute"`` (and undo a previous segmentation otherwise)."""
        if self.memory == "recompute":
            return recompute(model)
        return recompute(model, enable=False)

    def begin_step(self) -> None:
        self.end_step()
        if self.memory != "exact":
            self._stack = contextlib.ExitStack()
            self._stack.enter_context(packed())

    def end_step(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()
