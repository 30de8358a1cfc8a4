"""The bit codec: integer codes in ``[0, 2**bits)`` to bit planes of uint8 and back.

Eight 0/1 values ``b_0..b_7`` become one byte ``sum_k b_k 2^k``, computed as a matrix-vector product
with ``(1, 2, ..., 128)``: the sums are integers below 256, exact in every float type. Unpacking looks
each byte up in a 256 x 8 table. Both are single vectorised passes (and plain torch ops under compile).

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

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["pack_bits", "unpack_bits"]

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

    >>> import torch
    >>> pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8), bits=1)
    tensor([[13,  1]], dtype=torch.uint8)
    """
    flat = codes.reshape(-1)
    if bits == 1:
        return _bytes(flat, 0).unsqueeze(0)
    flat = flat.to(torch.uint8)
    return torch.stack([_bytes((flat >> j) & 1, 0) for j in range(bits)])


def unpack_bits(planes: Tensor, numel: int) -> Tensor:
    """The inverse of :func:`pack_bits`: the first ``numel`` codes as a flat uint8 tensor.

    >>> import torch
    >>> unpack_bits(torch.tensor([[13, 1]], dtype=torch.uint8), numel=9)
    tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8)
    """
    table = _table((0, 1), torch.uint8, planes.device)
    codes = None
    for j in range(planes.shape[0]):
        plane = table.index_select(0, planes[j].long()).view(-1)[:numel]
        codes = plane if codes is None else codes.bitwise_or_(plane << j)
    return codes
