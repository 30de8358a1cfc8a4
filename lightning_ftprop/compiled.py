"""Threshold units under ``torch.compile`` with ``memory="packed"``: the compiled graph keeps bits.

Saved-tensor hooks are not traced inside a compiled region, so :func:`lightning_ftprop.memory.packed`
cannot pack what a compiled graph keeps. Instead, while :func:`packing` is on (``packed()`` turns it
on), a unit traced by ``torch.compile`` computes its output *through its codes*::

    planes = pack_planes(codes(z))             uint8 bit planes, bits = ceil(log2(levels)) per element
    h      = decode(unpack_planes(planes))     bitwise the unit's forward (NaN where z is NaN)

inside a selective-checkpointing region (``torch.utils.checkpoint`` with
``create_selective_checkpoint_contexts``) whose policy must-saves the planes and prefers to recompute
everything else. So AOTAutograd's partitioner keeps the planes and rebuilds ``h`` in the backward for
the layer that reads it (the next conv), and the unit's ``z`` is recomputed from what BatchNorm keeps
anyway. The unit's backward is its usual one, on ``z``: the gradients are bitwise those of the compiled
``memory="exact"`` units.

Not covered (their compiled graphs keep floats, as with ``memory="exact"``): a unit's ``z`` that nothing
else keeps (convnet4's ``conv -> max-pool -> unit``: the soft hinge's backward needs it), and a residual
unit's ``z`` unless torch's partitioner may recompute values used far apart (``packed()`` sets
``torch._functorch.config.ban_recompute_used_far_apart = False``, a private option, while it is on).

>>> import torch
>>> from lightning_ftprop.kinds import SignKind
>>> codes_ = codes(torch.tensor([-1.0, 0.5, 2.0, 0.0]), SignKind())
>>> planes = pack_planes(codes_, bits=SignKind().bits)
>>> decode(unpack_planes(planes, 4), SignKind(), dtype=torch.float32)
tensor([-1.,  1.,  1., -1.])
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from lightning_ftprop import torch_private
from lightning_ftprop.kinds import UnitKind

__all__ = ["packing", "packing_on", "codes", "decode", "pack_planes", "unpack_planes", "in_region"]


class _Switch:
    on = False  # a plain global (not thread-local): torch.compile guards on it and recompiles when it flips


def packing_on() -> bool:
    """Whether units traced by ``torch.compile`` now compute their output through their bit codes.

    >>> packing_on()                          # on only inside memory.packed() (or packing())
    False
    """
    return _Switch.on


@contextlib.contextmanager
def packing() -> Iterator[None]:
    """Inside the block, units that ``torch.compile`` traces keep bits (see the module docstring).

    >>> with packing():
    ...     packing_on()
    True
    >>> packing_on()
    False
    """
    previous = _Switch.on
    _Switch.on = True
    with contextlib.ExitStack() as stack:
        config = torch_private.functorch_config()
        if config is not None and hasattr(config, "ban_recompute_used_far_apart"):
            stack.enter_context(config.patch(ban_recompute_used_far_apart=False))
        elif config is not None:
            torch_private.warn_changed(
                "torch._functorch.config.ban_recompute_used_far_apart", "a compiled residual unit keeps its z"
            )
        try:
            yield
        finally:
            _Switch.on = previous


def codes(z: Tensor, kind: UnitKind) -> Tensor:
    """The codes of the unit's output for input ``z`` (:meth:`~lightning_ftprop.kinds.UnitKind.index`), as
    float32 integers, 0 where ``z`` is NaN. Float, not uint8: CPU inductor reduces floats far faster.

    >>> from lightning_ftprop.kinds import QReLUKind
    >>> codes(torch.tensor([-0.5, 0.2, 0.6, 2.0]), QReLUKind(3))
    tensor([0., 1., 2., 3.])
    """
    index = kind.index(z)
    return torch.where(torch.isnan(index), 0.0, index).to(torch.float32)


def decode(codes_: Tensor, kind: UnitKind, dtype: torch.dtype) -> Tensor:
    """The unit's output from its codes, with the kind's own operations (so bitwise the forward's).

    >>> from lightning_ftprop.kinds import QReLUKind
    >>> decode(torch.tensor([0.0, 1.0, 2.0, 3.0]), QReLUKind(3), dtype=torch.float32)
    tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """
    return kind.decode(codes_, dtype)


_WEIGHTS = tuple(float(2**k) for k in range(8))


def pack_planes(codes_: Tensor, bits: int) -> Tensor:
    """``(bits, ceil(N / 8))`` uint8: bit ``i % 8`` of byte ``i // 8`` of plane ``j`` is bit ``j`` of code ``i``.

    The layout of :func:`lightning_ftprop.memory.pack_bits`, with traceable ops only: each byte is the
    float sum of its eight bits times ``2^k`` (exact: at most 255), cast once to uint8, the one uint8
    cast of a unit's region (what :func:`in_region`'s policy saves).

    >>> pack_planes(torch.tensor([1.0, 0, 1, 1, 0, 0, 0, 0, 1]), bits=1)
    tensor([[13,  1]], dtype=torch.uint8)
    """
    flat = codes_.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    weights = torch.tensor(_WEIGHTS, dtype=flat.dtype, device=flat.device)
    planes = []
    for j in range(bits):
        bit = flat if bits == 1 else torch.remainder(torch.floor(flat / 2**j), 2)  # exact on small integers
        planes.append((bit.view(-1, 8) * weights).sum(-1).to(torch.uint8))
    return torch.stack(planes)


def unpack_planes(planes: Tensor, numel: int) -> Tensor:
    """The first ``numel`` codes of :func:`pack_planes`'s planes (pointwise: cheap to recompute).

    >>> unpack_planes(torch.tensor([[13, 1]], dtype=torch.uint8), 9)
    tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.uint8)
    """
    shifts = torch.arange(8, dtype=torch.uint8, device=planes.device)
    out = None
    for j in range(planes.shape[0]):
        plane = ((planes[j].unsqueeze(-1) >> shifts) & 1).reshape(-1)[:numel]
        out = plane if out is None else out | (plane << j)
    return out


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Must-save the bit planes (the one cast to uint8), recompute everything else."""
    if op == torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.uint8:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def in_region(fn, *args):
    """``fn(*args)`` in a selective-checkpointing region with the planes-only policy.

    >>> x = torch.randn(3, requires_grad=True)
    >>> torch.equal(in_region(torch.tanh, x), torch.tanh(x))
    True
    """
    return checkpoint(fn, *args, use_reentrant=False, context_fn=partial(create_selective_checkpoint_contexts, _policy))
