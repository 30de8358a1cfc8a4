"""The packed saved-tensor hooks: :func:`pack` and :func:`unpack`, and the :func:`packed` context.

Inside :func:`packed` every tensor autograd saves passes through :func:`pack`:

* a threshold output (or a max-pool, view or transpose of one; found through ``x.grad_fn``) is kept as
  its codes, ``bits = ceil(log2(levels))`` bits per element:

      code(h) = 1[h > 0]                  sign, step            h = 2 code - 1  /  h = code
      code(h) = round(n h)                qrelu, n = steps      h = code / n

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
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from lightning_ftprop import functional as F
from lightning_ftprop.memory import unit_state
from lightning_ftprop.memory.codec import _bytes, _table, pack_bits, unpack_bits

__all__ = ["pack", "unpack", "packed"]

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


@contextlib.contextmanager
def packed() -> Iterator[None]:
    """Store every saved threshold output, mask and index tensor compactly (see the module docstring).

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
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack), unit_state.use_policy(unit_state.packed_state):
        yield
