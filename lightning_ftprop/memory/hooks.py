"""The packed saved-tensor hooks: :func:`pack` and :func:`unpack`, and the :func:`packed` context.

Inside :func:`packed` every tensor autograd saves passes through :func:`pack`:

* a threshold output (or a max-pool, view or transpose of one; found through ``x.grad_fn``) is kept as
  its codes, ``bits = ceil(log2(levels))`` bits per element:

      code(h) = 1[h > 0]                  sign, step            h = 2 code - 1  /  h = code
      code(h) = round(n h)                qrelu, n = thresholds h = code / n

* a ``bool`` mask is kept as 1 bit per element;
* an ``int64`` tensor (max-pool indices) is kept in the smallest integer type that holds its range;
* anything else is kept as it is.

:func:`unpack` rebuilds the tensor bitwise, with its shape, strides and dtype. A threshold output that
holds a NaN is kept as it is (no code stores NaN). Packing stores values, not the sign of a zero: a
qrelu output can hold ``-0.0`` (``ceil`` of a small negative number); it comes back as ``+0.0``, which
changes no non-zero number in any gradient (adding ``+-0`` to a non-zero sum is exact).

>>> import torch
>>> from lightning_ftprop import functional as F
>>> from lightning_ftprop.memory import pack, unpack
>>> h = F.sign(torch.randn(1000, requires_grad=True))
>>> saved = pack(h)                    # 1000 values of -1/+1 in 125 bytes
>>> saved.data.numel()
125
>>> torch.equal(unpack(saved), h.detach())
True
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from lightning_ftprop import compiled, torch_private, unit_state
from lightning_ftprop import functional as F
from lightning_ftprop.kinds import UnitKind
from lightning_ftprop.memory import policy, rebuild, report
from lightning_ftprop.memory.codec import _numpy_path, _table, lookup, pack_bools, pack_positive, unpack_bits
from lightning_ftprop.memory.rebuild import PACKED_TAG

__all__ = ["PackedTensor", "pack", "unpack", "packed"]


# --- kinds: which saved tensors are threshold outputs ---------------------------------------------

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
# A dtype cast (autocast's copy of a unit output for a matmul): exact for integer values (sign, step) only.
_CASTS = frozenset({"ToCopyBackward0"})
_SEARCH_DEPTH = 8


def unit_kind_of(x: Tensor) -> Optional[UnitKind]:
    """The :class:`~lightning_ftprop.kinds.UnitKind` whose values ``x`` holds when it is exactly a threshold
    output (through views, max-pools and copies), else None."""
    node, cast = x.grad_fn, False
    for _ in range(_SEARCH_DEPTH):
        if node is None:
            return None
        kind = F.output_kind(node)
        if kind is not None:  # k/n cast to another dtype is not code/n there: integer values only
            return kind if kind.levels <= _MAX_LEVELS and (not cast or kind.code_map[2] == 1) else None
        name = type(node).__name__
        if name in _CASTS:
            cast = True
        elif name not in _VALUE_PRESERVING:
            return None
        node = node.next_functions[0][0]
    return None


def _has_nan(flat: Tensor) -> bool:
    """One reduction: the values are bounded (threshold outputs), so the sum is NaN exactly when one is."""
    return bool(torch.isnan(flat.sum()))


def _codes(flat: Tensor, kind: UnitKind) -> Tensor:
    """The codes ``j`` of a threshold output ``h = v_j = (a j + b) / d`` as uint8 (no NaN).

    Up to 8 levels, on the CPU: ``sum_j 1[h > (v_(j-1) + v_j) / 2]``, one 1-byte comparison per threshold and
    no float temporary; otherwise ``round((d h - b) / a)`` in float32 (exact for at most 256 levels).
    """
    a, b, d = kind.code_map
    if kind.levels <= 8 and _numpy_path(flat) and flat.dtype in (torch.float32, torch.float64, torch.float16):
        values = flat.numpy()
        codes = np.zeros(values.shape, dtype=np.uint8)
        above = np.empty(values.shape, dtype=np.bool_)
        for low, high in zip(kind.values, kind.values[1:]):
            np.greater(values, float((low + high) / 2), out=above)
            np.add(codes, above, out=codes, casting="unsafe")
        return torch.from_numpy(codes)
    wide = flat.float() if flat.element_size() < 4 else flat
    if d != 1:
        wide = torch.mul(wide, d)
    if b:
        wide = wide - b
    return (wide / a if a != 1 else wide).round_().to(torch.uint8)


def _memory_order(x: Tensor) -> Optional[Tuple[int, ...]]:
    """The dims of ``x`` from outermost to innermost in memory when ``x`` is dense (no gaps), else None."""
    if x.is_contiguous():
        return tuple(range(x.dim()))
    order = tuple(sorted(range(x.dim()), key=lambda d: -x.stride(d)))
    return order if x.permute(order).is_contiguous() else None


class PackedTensor:
    """The packed storage of one saved tensor, in its memory order; :func:`unpack` rebuilds it as it was.

    ``form`` is ``"bool"`` (a mask, 1 bit per value), ``"int"`` (indices in the narrowest integer type
    that holds them) or ``"unit"`` (a threshold output of ``unit_kind``, its codes in ``bits`` planes).

    >>> import torch
    >>> stored = pack(torch.tensor([True, False, True]))
    >>> type(stored).__name__, stored.form, stored.data.dtype, unpack(stored).tolist()
    ('PackedTensor', 'bool', torch.uint8, [True, False, True])
    """

    __slots__ = ("data", "form", "unit_kind", "shape", "stride", "dtype", "order", "handed", "__weakref__")

    def __init__(self, data: Tensor, form: str, unit_kind: Optional[UnitKind], like: Tensor, order: Tuple[int, ...]):
        self.data, self.form, self.unit_kind, self.order = data, form, unit_kind, order
        self.handed: Optional[Tensor] = None  # see unpack(): decoded indices a rebuild hands to the next unpack
        self.shape, self.stride, self.dtype = like.shape, like.stride(), like.dtype


_MAX_LEVELS = 256  # codes are uint8


# Autograd nodes whose output is always a view of their input (never a copy).
_VIEWS = frozenset({"TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "ExpandBackward0"})


class _CastOf:
    """A dtype cast of a leaf (autocast's bf16 copy of a weight), or a view of one: kept as the leaf, the
    dtype and the view's geometry.

    The leaf is held by the graph anyway; the cast is deterministic, so casting again in the backward
    gives the same bits. A leaf changed in place since the forward is an error, as in autograd.
    """

    __slots__ = ("leaf", "dtype", "version", "geometry", "__weakref__")

    def __init__(self, leaf: Tensor, dtype: torch.dtype, version: int, like: Tensor):
        self.leaf, self.dtype, self.version = leaf, dtype, version
        self.geometry = (like.size(), like.stride(), like.storage_offset())

    def value(self) -> Tensor:
        if torch_private.version(self.leaf) != self.version:
            raise RuntimeError(
                f"a {tuple(self.leaf.shape)} leaf tensor (a parameter) whose {self.dtype} cast the backward needs was "
                "modified in place after the forward; step the optimizer after backward()"
            )
        return self.leaf.detach().to(self.dtype).as_strided(*self.geometry)


def _cast_of_leaf(x: Tensor) -> Optional[_CastOf]:
    """``x`` as a :class:`_CastOf` when it is a dtype cast of a dense leaf on the same device (or a view of one)."""
    node = x.grad_fn
    for _ in range(_SEARCH_DEPTH):
        name = type(node).__name__
        if name in _CASTS:
            break
        if name not in _VIEWS:
            return None
        node = node.next_functions[0][0]
    else:
        return None
    leaf = getattr(node.next_functions[0][0], "variable", None)
    if not isinstance(leaf, Tensor) or not leaf.is_floating_point() or leaf.dtype == x.dtype:
        return None
    if leaf.device != x.device or not leaf.is_contiguous():  # the cast of a contiguous leaf is contiguous
        return None
    if x.untyped_storage().nbytes() != leaf.numel() * x.element_size():  # x views all of the cast, nothing else
        return None
    version = torch_private.version(leaf)
    if version is None:  # a private tensor attribute: without it, no in-place check; keep x
        return None
    return _CastOf(leaf, x.dtype, version, x)


def pack(x: Tensor):
    """The compact form of a saved tensor, or ``x`` itself when nothing exact is smaller.

    * a threshold output (found through ``x.grad_fn``, see :data:`_VALUE_PRESERVING`) -> its codes,
      bit-packed in ``x``'s memory order (no copy of ``x`` first; on the CPU the 1-bit codes are
      written once by ``numpy.packbits`` from a 1-byte comparison);
    * a ``bool`` tensor -> 1 bit per element;
    * an ``int64`` tensor -> the smallest of int8/int16/int32 that holds its range.

    A packed threshold output is also recorded on its ``grad_fn`` (``metadata``), so that a unit whose
    ``z`` adds it (a residual block) can rebuild ``z`` from these bits (:mod:`.rebuild`).

    >>> import torch
    >>> stored = pack(torch.rand(100) > 0.5)        # a bool mask: 100 bits in 13 bytes
    >>> stored.data.numel()
    13
    """
    if x.layout != torch.strided or x.numel() == 0:
        return x
    order = _memory_order(x)
    if order is None:
        return x
    if x.dtype == torch.bool:
        return PackedTensor(pack_bools(x.detach().permute(order).reshape(-1)), "bool", None, x, order)
    if x.dtype == torch.int64:
        if x.numel() < 64:
            return x
        lo, hi = torch.aminmax(x)
        lo, hi = int(lo), int(hi)
        for small in (torch.int8, torch.int16, torch.int32):
            info = torch.iinfo(small)
            if info.min <= lo and hi <= info.max:
                return PackedTensor(x.to(small), "int", None, x, order)
        return x
    if not x.is_floating_point() or x.grad_fn is None:  # a leaf (a weight, the input) or a detached tensor
        return x
    cast = _cast_of_leaf(x)
    if cast is not None:
        return cast
    kind = unit_kind_of(x)
    if kind is None:
        return x
    flat = x.detach().permute(order).reshape(-1)  # a view: x is dense in this order
    if _has_nan(flat):
        return x  # no code stores NaN
    if kind.levels == 2 and kind.values[0] <= 0 < kind.values[1]:  # sign: -1/+1, step: 0/1; the bit is 1[h > 0]
        stored = PackedTensor(pack_positive(flat), "unit", kind, x, order)
    else:
        codes = _codes(flat, kind)
        planes = [pack_bools((codes >> j) & 1 != 0) for j in range(kind.bits)]
        stored = PackedTensor(torch.stack(planes), "unit", kind, x, order)
    if x.grad_fn is not None:
        x.grad_fn.metadata[PACKED_TAG] = (x.output_nr, weakref.ref(stored), unpack)
    return stored


def unpack(stored, samples: Optional[int] = None) -> Tensor:
    """The inverse of :func:`pack`: bitwise the values that were packed, with the same strides.

    With ``samples=k``: only ``[:k]`` along dim 0 (contiguous; what :mod:`.rebuild` checks).

    >>> import torch
    >>> mask = torch.rand(3, 5) > 0.5
    >>> torch.equal(unpack(pack(mask)), mask)
    True
    """
    if isinstance(stored, _CastOf):
        stored = stored.value()
    if not isinstance(stored, PackedTensor):
        return stored if samples is None else stored[:samples]
    if stored.form == "int":
        if stored.handed is not None:  # decoded by a rebuild just before: the owner's own backward takes it
            values, stored.handed = stored.handed, None
            return values if samples is None else values[:samples]
        values = stored.data.to(stored.dtype)
        if samples is None and rebuild.rebuilding():
            stored.handed = values  # a max-pool's indices: its backward, next, needs them decoded too
        return values if samples is None else values[:samples]
    shape, order = list(stored.shape), stored.order
    if samples is not None and order[0] != 0:  # dim 0 is not outermost in memory: decode all, then slice
        return unpack(stored)[:samples]
    if samples is not None:
        shape[0] = min(samples, shape[0])
    numel = math.prod(shape)
    data = stored.data
    kind = stored.unit_kind
    if kind is None or kind.levels == 2:  # one bit per value: look the values up, 8 at a time
        values = (False, True) if kind is None else tuple(float(v) for v in kind.values)
        dtype = torch.bool if kind is None else stored.dtype
        flat = lookup(data, _table(values, torch.uint8 if dtype == torch.bool else dtype, data.device), numel)
        flat = flat.view(torch.bool) if dtype == torch.bool else flat
    else:
        flat = kind.decode(unpack_bits(data[:, : -(-numel // 8)], numel), stored.dtype)
    permuted = flat.view([shape[d] for d in order])
    inverse = sorted(range(len(order)), key=lambda d: order[d])
    values = permuted.permute(inverse)
    if samples is not None or values.stride() == stored.stride or numel <= 1:
        return values
    out = torch.empty_strided(stored.shape, stored.stride, dtype=stored.dtype, device=flat.device)
    return out.copy_(values)


@contextlib.contextmanager
def packed() -> Iterator[None]:
    """Store every saved threshold output, mask and index tensor compactly (see the module docstring).

    The units inside keep less too (:func:`~lightning_ftprop.memory.policy.packed_state`): nothing
    when their ``z`` can be rebuilt in one pass (after BatchNorm here), else a 1-bit mask (``sste``)
    or ``z``. Forward and backward values are unchanged: everything is lossless. Packing happens when
    autograd saves a tensor (in the forward), unpacking when the backward needs it; the backward may
    run inside or outside the context. A ``torch.compile``'d model called inside the context keeps its
    units' bit codes too (:mod:`lightning_ftprop.compiled`).

    >>> import copy, torch
    >>> from torch import nn
    >>> import lightning_ftprop as ftp
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), ftp.Sign("soft_hinge"),
    ...                       nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    >>> twin, x = copy.deepcopy(model), torch.randn(4, 3, 8, 8)
    >>> model(x).square().sum().backward()
    >>> with packed():
    ...     loss = twin(x).square().sum()
    >>> loss.backward()
    >>> all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), twin.parameters()))
    True

    Raises:
        RuntimeError: entered inside a compiled region (saved-tensor hooks cannot be traced there);
            call the compiled model inside the context instead.
    """
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "lightning_ftprop.memory.packed() cannot run inside torch.compile (saved-tensor hooks are not "
            "traced); call the compiled model inside the context instead, or use memory='exact'"
        )
    hook = report.metered(pack)  # pack itself, unless a memory.report.Meter counts
    with torch.autograd.graph.saved_tensors_hooks(hook, unpack), unit_state.use_policy(policy.packed_state, hook):
        with compiled.packing():  # units that torch.compile traces keep bits too (lightning_ftprop.compiled)
            yield
