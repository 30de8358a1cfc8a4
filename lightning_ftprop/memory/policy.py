"""The unit-state policy of :func:`lightning_ftprop.memory.packed`: keep less than ``z``, within the contract.

A policy answers a unit's :class:`~lightning_ftprop.unit_state.UnitCall` with a
:class:`~lightning_ftprop.unit_state.UnitState` (the protocol lives in the units layer,
:mod:`lightning_ftprop.unit_state`; this package implements it and never touches autograd's ``ctx``).

>>> import torch
>>> from lightning_ftprop import functional as F
>>> from lightning_ftprop.unit_state import use_policy
>>> with use_policy(packed_state):
...     h = F.sign(torch.randn(16, requires_grad=True), rule="sste")
>>> h.grad_fn.kept                      # sste kept a 1-bit mask instead of z
('1-bit mask', "sste's surrogate is 0/1")
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from lightning_ftprop.memory import rebuild
from lightning_ftprop.memory.codec import _table, lookup, pack_bools
from lightning_ftprop.rules import get_rule
from lightning_ftprop.unit_state import UnitCall, UnitState

__all__ = ["packed_state", "detached_state"]

_SSTE = get_rule("sste")


def packed_state(call: UnitCall) -> Optional[UnitState]:
    """The policy of :func:`lightning_ftprop.memory.packed`.

    1. A unit that would keep ``z`` keeps nothing when ``z`` can be rebuilt in one pass from what
       autograd keeps anyway (:mod:`~lightning_ftprop.memory.rebuild`: BatchNorm, max-pool, a residual
       sum) and the rebuild of the first sample passes :func:`~lightning_ftprop.memory.rebuild.check`:
       bitwise, or within rounding for a rule whose backward does not jump (no ``edges``). Its backward
       rebuilds ``z`` (differentiably under ``create_graph``) and runs the unit's own backward on it.
    2. Otherwise ``sste`` (weighted, one coordinate) keeps its 0/1 surrogate ``1[|u| <= 1]`` as 1 bit per
       element; its backward is ``threshold_backward(g, s, 0)`` (bitwise the exact one, NaN included).
    3. Otherwise None with the reason: the unit keeps what it keeps without a policy.

    The three cases, read from the units' ``grad_fn.kept`` (``(what, why)``):

    >>> import torch
    >>> from torch import nn
    >>> import lightning_ftprop as ftp
    >>> from lightning_ftprop.unit_state import use_policy
    >>> _ = torch.manual_seed(0)
    >>> conv, bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
    >>> x = torch.randn(2, 1, 5, 5)
    >>> with use_policy(packed_state):
    ...     after_bn = ftp.Sign(rule="soft_hinge")(bn(conv(x)))
    ...     sste = ftp.Sign(rule="sste")(conv(x))
    ...     after_conv = ftp.Sign(rule="soft_hinge")(conv(x))
    >>> after_bn.grad_fn.kept
    ('nothing', 'z is rebuilt from BatchNorm in the backward')
    >>> sste.grad_fn.kept
    ('1-bit mask', "sste's surrogate is 0/1")
    >>> after_conv.grad_fn.kept
    ('z (float32)', "z comes from a matmul (ConvolutionBackward0); memory='recompute' rebuilds it")
    """
    if not call.keeps_z:
        return None
    z, rule = call.z, call.rule
    recipe = rebuild.plan(z)
    verdict = rebuild.check(recipe, z) if recipe is not None else None
    jumps = bool(rule.edges) or rule.window is not None
    if verdict == "bitwise" or (verdict == "rounding" and not jumps):
        backward = functools.partial(_rebuilt_backward, recipe, call.backward_from_z)
        return UnitState("nothing", f"z is rebuilt from {recipe.describe()} in the backward", backward=backward)
    mask = _mask_state(call)
    if mask is not None:
        return mask
    if recipe is None:
        return UnitState("", rebuild.why_not(z))
    if verdict == "rounding":
        return UnitState("", f"{rule.name}'s backward jumps at its edges and the rebuild of z was not bitwise (kept z)")
    return UnitState("", "the rebuild of z did not match z (kept z)")


def _mask_state(call: UnitCall) -> Optional[UnitState]:
    """``sste``'s 0/1 surrogate as 1 bit per element, or None for other rules."""
    rule, z = call.rule, call.z
    if not (rule == _SSTE and call.weighted and len(call.kind.affine_maps(call.mode)) == 1):  # == : a copy too
        return None
    with torch.no_grad():
        ones = torch.ones((), dtype=z.dtype, device=z.device).expand_as(z)
        surrogate = call.backward_from_z(ones, z.detach())  # exactly the exact backward's mask
        bits = pack_bools((surrogate != 0).reshape(-1))
    backward = functools.partial(_mask_backward, z.shape, z.dtype)
    return UnitState("1-bit mask", "sste's surrogate is 0/1", tensors=(bits,), backward=backward)


def detached_state(reason: str) -> Callable[[UnitCall], Optional[UnitState]]:
    """:func:`packed_state` on a detached ``z`` (no rebuild: only sste's mask), else None with ``reason``.

    Used by :func:`~lightning_ftprop.memory.recompute`, where the saved tensors a rebuild would read
    are themselves references (reading one re-runs a module call): a reference rebuilds ``z`` anyway.

    >>> import torch
    >>> from lightning_ftprop import functional as F
    >>> from lightning_ftprop.unit_state import use_policy
    >>> with use_policy(detached_state("z is a reference")):
    ...     F.sign(torch.randn(3, requires_grad=True) * 2, rule="soft_hinge").grad_fn.kept
    ('z (float32)', 'z is a reference')
    """

    def policy(call: UnitCall) -> Optional[UnitState]:
        state = packed_state(dataclasses.replace(call, z=call.z.detach()))
        return state if state is not None and state.backward is not None else UnitState("", reason)

    return policy


def _rebuilt_backward(recipe: rebuild.ZRecipe, backward_from_z, saved: Tuple[Tensor, ...], g: Tensor) -> Tensor:
    # Under create_graph=True the backward runs with grad mode on: rebuild z with its autograd history.
    return backward_from_z(g, recipe.run(differentiable=torch.is_grad_enabled()))


def _mask_backward(shape: torch.Size, dtype: torch.dtype, saved: Tuple[Tensor, ...], g: Tensor) -> Tensor:
    """``g * s`` for a 0/1 surrogate ``s`` kept by :func:`packed_state`; zeros are +0.0 as in the exact backward."""
    (data,) = saved
    mask = lookup(data, _table((0, 1), dtype, data.device), math.prod(shape)).view(shape)
    return torch.ops.aten.threshold_backward(g, mask, 0)
