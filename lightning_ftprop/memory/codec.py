"""The bit codec: integer codes in ``[0, 2**bits)`` to bit planes of uint8 and back.

Eight 0/1 values ``b_0..b_7`` become one byte ``sum_k b_k 2^k`` (little-endian bit order, numpy's
``packbits(..., bitorder="little")``). On the CPU, in eager mode, numpy's ``packbits`` writes the bytes
in one pass at memory bandwidth, from a 1-byte-per-element comparison (no float temporary); on other
devices and under ``torch.compile`` the same bytes come from plain torch ops (eight 0/1 bytes viewed as
one int64 word, folded with three shift-ors). Unpacking looks each byte up in a 256 x 8 table, so the
output is written once.

>>> import torch
>>> from lightning_ftprop.memory import pack_bits, unpack_bits
>>> codes = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 1], dtype=torch.uint8)
>>> planes = pack_bits(codes, bits=2)          # 2 bit planes, ceil(9 / 8) = 2 bytes each
>>> planes.shape
torch.Size([2, 2])
>>> torch.equal(unpack_bits(planes, codes.numel()), codes)
True
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["pack_bits", "unpack_bits", "pack_bools", "pack_positive", "lookup"]

_TABLES: dict = {}


def _table(values: Tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """256 x 8: row ``b`` holds ``values[bit k of b]`` for k = 0..7."""
    key = (values, dtype, device)
    if key not in _TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _TABLES[key] = torch.tensor(values, dtype=torch.float64)[bits].to(dtype=dtype, device=device)
    return _TABLES[key]


def _numpy_path(x: Tensor) -> bool:
    """numpy's packbits runs at memory bandwidth on the CPU; torch ops elsewhere and under compile."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and not x.requires_grad


def pack_bools(flat: Tensor) -> Tensor:
    """Bit ``i % 8`` of byte ``i // 8`` is ``flat[i]`` (a flat bool tensor): ``ceil(N / 8)`` bytes, written once.

    >>> import torch
    >>> pack_bools(torch.tensor([True, False, True, True, False, False, False, False, True]))
    tensor([13,  1], dtype=torch.uint8)
    """
    if _numpy_path(flat):
        return torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    elif flat.storage_offset() % 8 or not flat.is_contiguous():
        flat = flat.clone()
    # Eight 0/1 bytes in one int64 word; fold bit 8k down to bit k in three shift-ors (no overflow).
    words = flat.view(torch.uint8).view(-1, 8).view(torch.int64).view(-1)
    words = words | (words >> 7)
    words = words | (words >> 14)
    words = words | (words >> 28)
    return (words & 0xFF).to(torch.uint8)


def pack_positive(flat: Tensor) -> Tensor:
    """:func:`pack_bools` of ``flat > 0`` for a flat float tensor, without a float temporary.

    >>> import torch
    >>> pack_positive(torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 1.0]))
    tensor([13,  1], dtype=torch.uint8)
    """
    if _numpy_path(flat) and flat.dtype in (torch.float32, torch.float64, torch.float16):
        return torch.from_numpy(np.packbits(np.greater(flat.numpy(), 0), bitorder="little"))
    if _numpy_path(flat) and flat.dtype == torch.bfloat16:  # numpy has no bfloat16: compare the bits
        # a bfloat16 is > 0 exactly when its int16 pattern is > 0 (no NaN here: pack() checks first)
        return torch.from_numpy(np.packbits(np.greater(flat.view(torch.int16).numpy(), 0), bitorder="little"))
    return pack_bools(flat > 0)


def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into bit planes: a uint8 tensor ``(bits, ceil(N / 8))``.

    Bit ``j`` of code ``i`` is bit ``i % 8`` of byte ``planes[j, i // 8]``.

    >>> import torch
    >>> pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8), bits=1)
    tensor([[13,  1]], dtype=torch.uint8)
    """
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 1:
        return pack_bools(flat != 0).unsqueeze(0)
    return torch.stack([pack_bools(((flat >> j) & 1) != 0) for j in range(bits)])


def unpack_bits(planes: Tensor, numel: int) -> Tensor:
    """The inverse of :func:`pack_bits`: the first ``numel`` codes as a flat uint8 tensor.

    >>> import torch
    >>> unpack_bits(torch.tensor([[13, 1]], dtype=torch.uint8), numel=9)
    tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8)
    """
    table = _table((0, 1), torch.uint8, planes.device)
    codes = None
    for j in range(planes.shape[0]):
        plane = lookup(planes[j], table, numel)
        codes = plane if codes is None else codes.bitwise_or_(plane << j)
    return codes


def lookup(data: Tensor, table: Tensor, numel: int) -> Tensor:
    """The first ``numel`` values of ``table[byte]`` for each byte of ``data``: the output written once.

    Tables map each bit to one of two values (row 0 holds the value of bit 0, row 255 that of bit 1).

    ``table`` is 256 x 8, row ``b`` holding the values of the eight bits of byte ``b``; decoding sign
    outputs packed by :func:`pack_positive`:

    >>> import torch
    >>> signs = _table((-1.0, 1.0), torch.float32, torch.device("cpu"))   # bit 0 -> -1, bit 1 -> +1
    >>> lookup(torch.tensor([13, 1], dtype=torch.uint8), signs, numel=9)
    tensor([ 1., -1.,  1.,  1., -1., -1., -1., -1.,  1.])
    """
    nbytes = -(-numel // 8)
    data = data.reshape(-1)[:nbytes]
    if _numpy_path(data) and table.dtype in _NUMPY_TABLES:  # numpy's take: one pass, no int64 indices
        return torch.from_numpy(np.take(table.numpy(), data.numpy(), axis=0)).view(-1)[:numel]
    if _numpy_path(data) and table.dtype == torch.bfloat16:  # the same on the bit patterns
        bits = np.take(table.view(torch.int16).numpy(), data.numpy(), axis=0)
        return torch.from_numpy(bits).view(torch.bfloat16).view(-1)[:numel]
    # Elsewhere (CUDA, under compile): the bits by shifts and one select between the two values, elementwise;
    # a gather of table rows by int64 byte indices took 46% of a packed resnet18 step's CUDA time on an H200.
    bits = (data.unsqueeze(-1) >> _shifts(data.device)) & 1
    return torch.where(bits.bool(), table[255, 0], table[0, 0]).view(-1)[:numel]


def _shifts(device: torch.device) -> Tensor:
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS[device]


_SHIFTS: dict = {}
_NUMPY_TABLES = (torch.float32, torch.float64, torch.float16, torch.uint8)
