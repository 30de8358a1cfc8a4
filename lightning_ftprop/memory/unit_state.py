"""The unit-state protocol: what a threshold unit keeps for its backward, decided per thread.

A threshold unit (:mod:`lightning_ftprop.functional`) keeps its pre-activation ``z`` for the backward
unless a *policy* active in the current thread keeps something smaller. The protocol:

* The unit, in ``setup_context``, calls :func:`active_policy`. If it returns a policy, the unit calls
  ``policy(ctx, z, rule, weighted, saved, steps, mode)``. A policy that keeps a compact state calls
  ``ctx.save_for_backward(state)``, sets ``ctx.compact = True`` and ``ctx.state_backward``, a function
  ``(state, g) -> dz`` that the unit's backward calls, and returns True. Returning False leaves the
  unit to keep ``z`` as it would with no policy.
* :func:`use_policy` sets the policy for the current thread (for the ``with`` block);
  :func:`lightning_ftprop.memory.packed` uses it with :func:`packed_state`. :func:`float_state` is
  ``use_policy(None)``: units keep their float ``z``.
* :func:`recomputation` marks a block in which a forward is re-run to rebuild saved tensors (the
  backward of ``memory="recompute"``); :func:`recomputing` is True inside it. Forward hooks that must
  see each forward once (:class:`~lightning_ftprop.diagnostics.FTPropDiagnostics`) check it.

All state is thread-local, like torch's saved-tensor hooks: a policy set in one thread changes no unit
running in another. A recomputation runs in the thread that runs the backward, and enters
:func:`float_state` and :func:`recomputation` there itself. Under ``torch.compile`` no policy applies
(units keep ``z``; the gradients are the same).

What :func:`lightning_ftprop.memory.recompute` calls here is only :func:`float_state` and
:func:`recomputation`.

>>> import torch
>>> from lightning_ftprop import functional as F
>>> from lightning_ftprop.memory import unit_state
>>> unit_state.active_policy() is None
True
>>> with unit_state.use_policy(unit_state.packed_state):
...     h = F.sign(torch.randn(16, requires_grad=True), rule="sste")
>>> h.grad_fn.compact                   # sste kept a 1-bit mask instead of z
True
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from lightning_ftprop import functional as F
from lightning_ftprop.memory.codec import _bytes, _table
from lightning_ftprop.rules import get_rule

__all__ = ["Policy", "active_policy", "use_policy", "float_state", "recomputation", "recomputing", "packed_state"]

#: ``policy(ctx, z, rule, weighted, saved, steps, mode) -> bool`` (see the module docstring).
Policy = Callable[..., bool]


class _ThreadState(threading.local):
    policy: Optional[Policy] = None
    recomputing: int = 0


_STATE = _ThreadState()


def active_policy() -> Optional[Policy]:
    """The policy the units of the current thread consult, or None (they keep ``z``)."""
    return _STATE.policy


@contextlib.contextmanager
def use_policy(policy: Optional[Policy]) -> Iterator[None]:
    """Units created (forward run) in this thread inside the block consult ``policy``.

    >>> with use_policy(None):
    ...     active_policy() is None
    True
    """
    previous = _STATE.policy
    _STATE.policy = policy
    try:
        yield
    finally:
        _STATE.policy = previous


def float_state() -> contextlib.AbstractContextManager:
    """Inside the block the units of this thread keep their float ``z`` (``use_policy(None)``)."""
    return use_policy(None)


@contextlib.contextmanager
def recomputation() -> Iterator[None]:
    """Mark a forward re-run in the backward (``memory="recompute"``); :func:`recomputing` is True inside.

    >>> with recomputation():
    ...     recomputing()
    True
    >>> recomputing()
    False
    """
    _STATE.recomputing += 1
    try:
        yield
    finally:
        _STATE.recomputing -= 1


def recomputing() -> bool:
    """True while a :func:`lightning_ftprop.memory.recompute` segment re-runs its forward in this thread."""
    return _STATE.recomputing > 0


# --- the packed policy -----------------------------------------------------------------------------

_SSTE = get_rule("sste")


def packed_state(ctx, z: Tensor, rule, weighted: bool, saved: str, steps: int, mode: str) -> bool:
    """The policy of :func:`lightning_ftprop.memory.packed`.

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
    ctx.state_backward = functools.partial(_mask_backward, z.shape, z.dtype)
    ctx.save_for_backward(_bytes(surrogate.reshape(-1), 0))
    return True


def _mask_backward(shape: torch.Size, dtype: torch.dtype, data: Tensor, g: Tensor) -> Tensor:
    """``g * s`` for a 0/1 surrogate ``s`` kept by :func:`packed_state`; zeros are +0.0 as in the exact backward."""
    table = _table((0, 1), dtype, data.device)
    mask = table.index_select(0, data.long()).view(-1)[: math.prod(shape)].view(shape)
    return torch.ops.aten.threshold_backward(g, mask, 0)
