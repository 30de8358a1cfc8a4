"""Training memory: keep threshold outputs as bits between the forward and the backward.

A threshold unit's output ``h`` takes one of ``levels`` values (see :mod:`lightning_ftprop.nn`), so
any tensor that a later layer saves for its backward (a conv's input, a linear's input, a max-pool's
input) is stored exactly in ``bits = ceil(log2(levels))`` bits per element instead of 32:

    code(h) = 1[h > 0]                  sign, step            h = 2 code - 1  /  h = code
    code(h) = round(n h)                qrelu, n = thresholds h = code / n

Three memory modes, from most to least held memory:

* ``"exact"``: plain autograd; every saved tensor as it is.
* ``"packed"``: :func:`packed`, a context manager used like ``torch.autograd.graph.save_on_cpu``.
  Inside it every saved tensor that is a threshold output (or a max-pool, view or transpose of one)
  is bit-packed, a saved ``bool`` mask is bit-packed, and a saved ``int64`` tensor (max-pool indices)
  is kept in the smallest integer type that holds its range; autocast's low-precision copy of a weight
  is kept as the weight. The units' own state is compact too (:mod:`~lightning_ftprop.memory.policy`):
  a unit whose ``z`` one pass rebuilds from what autograd keeps anyway (after BatchNorm, a max-pool, a
  residual sum; :mod:`~lightning_ftprop.memory.rebuild`) keeps nothing, whatever its rule; otherwise
  ``sste`` keeps the 1-bit mask ``1[|u| <= 1]``, ``ste`` nothing, and other rules ``z``. The gradients
  equal ``"exact"`` within the contract of docs/memory.md (bitwise on the CPU in fp32 and bf16). A
  ``torch.compile``'d model called inside keeps its units' bit codes (:mod:`lightning_ftprop.compiled`).
* ``"recompute"``: :func:`recompute` on the model, then training under :func:`packed`. Besides the
  bits, the forward keeps references to the module calls that computed the other saved tensors
  (``conv -> BN -> unit``: BN's input and the unit's ``z``); the backward calls those modules again.
  Found from the module calls of the forward, so unmodified third-party models are covered. Every
  rule, ``soft_hinge`` included, keeps its exact gradient (equal to ``"exact"`` up to float
  reassociation; in practice bitwise).

The package, one module per part:

* :mod:`~lightning_ftprop.memory.codec`: the bit codec (:func:`pack_bits`, :func:`unpack_bits`);
* :mod:`~lightning_ftprop.memory.hooks`: the packed saved-tensor hooks (:func:`pack`, :func:`unpack`,
  :func:`packed`);
* :mod:`~lightning_ftprop.memory.policy`: the unit-state policy of :func:`packed`, an implementation of
  the units' protocol (:mod:`lightning_ftprop.unit_state`);
* :mod:`~lightning_ftprop.memory.rebuild`: rebuilding a unit's ``z`` in its backward from what autograd
  keeps anyway;
* :mod:`~lightning_ftprop.memory.recompute`: rebuilding saved tensors in the backward by calling the
  module calls of the forward again (:func:`recompute`);
* :mod:`~lightning_ftprop.memory.modes`: :data:`MEMORY_MODES`, :data:`DEFAULT_MEMORY` and
  :class:`MemoryMode`;
* :mod:`~lightning_ftprop.memory.measure`: :func:`saved_bytes`, the bytes autograd holds for the backward
  (counted by :mod:`~lightning_ftprop.memory.report`).

>>> import torch
>>> from torch import nn
>>> import lightning_ftprop as ftp
>>> from lightning_ftprop import memory
>>> model = nn.Sequential(nn.Linear(8, 16), ftp.Sign(rule="sste"), nn.Linear(16, 2))
>>> x = torch.randn(4, 8)
>>> with memory.packed():
...     loss = model(x).square().sum()
>>> loss.backward()                     # bitwise the gradients of plain autograd
"""

from __future__ import annotations

from lightning_ftprop.memory.codec import pack_bits, unpack_bits
from lightning_ftprop.memory.hooks import PackedTensor, pack, packed, unpack
from lightning_ftprop.memory.measure import SavedBytes, saved_bytes
from lightning_ftprop.memory.modes import DEFAULT_MEMORY, MEMORY_MODES, MemoryMode, check_memory
from lightning_ftprop.memory.recompute import _SEGMENTS, recompute  # noqa: F401  (_SEGMENTS: tests)
from lightning_ftprop.unit_state import recomputing

__all__ = [
    "MEMORY_MODES",
    "PackedTensor",
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
    "saved_bytes",
    "SavedBytes",
]
