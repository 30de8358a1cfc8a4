"""The unit-state protocol: what a threshold unit keeps for its backward, decided per thread.

A threshold unit (:mod:`lightning_ftprop.functional`) keeps its pre-activation ``z`` for the backward
unless a *policy* active in the current thread keeps something smaller. The protocol:

* The unit, in ``setup_context``, calls :func:`active_policy`. If it returns a policy, the unit calls
  ``policy(ctx, z, rule, weighted, saved, steps, mode)``. A policy that keeps a compact state calls
  ``ctx.save_for_backward(*state)``, sets ``ctx.compact = True``, ``ctx.kept = (what, why)`` and
  ``ctx.state_backward``, a function ``(saved_tensors, g) -> dz`` that the unit's backward calls, and
  returns True. Returning False leaves the
  unit to keep ``z`` as it would with no policy.
* :func:`use_policy` sets the policy for the current thread (for the ``with`` block);
  :func:`lightning_ftprop.memory.packed` uses it with :func:`packed_state` and its own pack hook, so
  that the policy applies only while packed()'s hooks are the innermost saved-tensor hooks (inside
  ``torch.utils.checkpoint`` or a user's ``saved_tensors_hooks`` the units keep ``z``). :func:`float_state` is
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
from lightning_ftprop.memory import rebuild
from lightning_ftprop.memory.codec import _table, lookup, pack_bools
from lightning_ftprop.rules import get_rule

__all__ = ["Policy", "active_policy", "use_policy", "float_state", "recomputation", "recomputing", "packed_state"]

#: ``policy(ctx, z, rule, weighted, saved, steps, mode) -> bool`` (see the module docstring).
Policy = Callable[..., bool]


class _ThreadState(threading.local):
    policy: Optional[Policy] = None
    pack_hook: Optional[Callable] = None
    recomputing: int = 0


_STATE = _ThreadState()
# The pack hook on top of this thread's saved-tensor hooks (torch keeps that stack per thread).
_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def active_policy() -> Optional[Policy]:
    """The policy the units of the current thread consult now, or None (they keep ``z``).

    A policy set with a ``pack_hook`` applies only while that hook is the innermost saved-tensor hook
    of the thread: inside ``torch.utils.checkpoint`` or a user's own ``saved_tensors_hooks`` (whose hooks
    receive whatever the unit saves), units keep ``z`` as they would without :func:`packed`.

    >>> import torch
    >>> active_policy() is None              # by default units keep z
    True
    >>> def hook(t):
    ...     return t
    >>> with torch.autograd.graph.saved_tensors_hooks(hook, hook), use_policy(packed_state, pack_hook=hook):
    ...     print(active_policy() is packed_state)
    ...     with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):   # a user's hooks on top
    ...         print(active_policy())
    True
    None
    """
    policy = _STATE.policy
    if policy is None or _STATE.pack_hook is None or _top_hooks is None:
        return policy
    top = _top_hooks(False)
    return policy if top is not None and top[0] is _STATE.pack_hook else None


@contextlib.contextmanager
def use_policy(policy: Optional[Policy], pack_hook: Optional[Callable] = None) -> Iterator[None]:
    """Units run in this thread inside the block consult ``policy`` (see :func:`active_policy`).

    ``pack_hook``: the saved-tensor pack hook the policy goes with (``packed()`` passes its own);
    the policy applies only while that hook is the innermost one.

    >>> with use_policy(None):
    ...     active_policy() is None
    True
    """
    previous = _STATE.policy, _STATE.pack_hook
    _STATE.policy, _STATE.pack_hook = policy, pack_hook
    try:
        yield
    finally:
        _STATE.policy, _STATE.pack_hook = previous


def float_state() -> contextlib.AbstractContextManager:
    """Inside the block the units of this thread keep their float ``z`` (``use_policy(None)``).

    >>> import torch
    >>> from lightning_ftprop import functional as F
    >>> z = torch.randn(8, requires_grad=True)
    >>> with use_policy(packed_state):
    ...     print(F.sign(z, rule="sste").grad_fn.kept[0])
    ...     with float_state():
    ...         print(F.sign(z, rule="sste").grad_fn.kept[0])
    1-bit mask
    z (float32)
    """
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
    """True while a :func:`lightning_ftprop.memory.recompute` segment re-runs its forward in this thread.

    A forward hook that must count each forward once skips the backward's re-runs:

    >>> import torch
    >>> from torch import nn
    >>> seen = []
    >>> lin = nn.Linear(2, 2)
    >>> _ = lin.register_forward_hook(lambda m, args, out: None if recomputing() else seen.append(out.shape))
    >>> _ = lin(torch.ones(1, 2))
    >>> with recomputation():                # as the backward of memory="recompute" re-runs it
    ...     _ = lin(torch.ones(1, 2))
    >>> seen
    [torch.Size([1, 2])]
    """
    return _STATE.recomputing > 0


# --- the packed policy -----------------------------------------------------------------------------

_SSTE = get_rule("sste")


def packed_state(ctx, z: Tensor, rule, weighted: bool, saved: str, steps: int, mode: str) -> bool:
    """The policy of :func:`lightning_ftprop.memory.packed`: keep less than ``z``, exactly.

    1. A unit that would keep ``z`` (its rule reads ``z``, ``saved="input"``) keeps nothing when ``z``
       can be rebuilt in one pass from what autograd keeps anyway (:mod:`~lightning_ftprop.memory.rebuild`:
       BatchNorm, max-pool, a residual sum) and the rebuild of the first sample is bitwise ``z``'s.
       Its backward rebuilds ``z`` and runs the unit's own backward on it: bitwise ``"exact"``.
    2. Otherwise ``sste`` (weighted, one coordinate) keeps its 0/1 surrogate ``1[|u| <= 1]`` as 1 bit per
       element, and its backward is ``threshold_backward(g, s, 0)`` (bitwise the exact one, NaN included).
    3. Otherwise the unit keeps what it keeps without a policy, and ``ctx.kept_why`` says why.

    The three cases, read from the units' ``grad_fn.kept`` (``(what, why)``):

    >>> import torch
    >>> from torch import nn
    >>> import lightning_ftprop as ftp
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
    keeps_z = rule.uses_input and not (weighted and rule.surrogate is not None and saved != "input")
    if not keeps_z:
        return False
    recipe = rebuild.plan(z)
    if recipe is not None and rebuild.check(recipe, z):
        ctx.compact = True
        ctx.kept = ("nothing", f"z is rebuilt from {recipe.describe()} in the backward")
        ctx.state_backward = functools.partial(_rebuilt_backward, recipe, rule, weighted, steps, mode)
        ctx.save_for_backward()
        return True
    if rule == _SSTE and weighted and not (steps and mode != "single"):  # == : a deep-copied rule too
        ones = torch.ones((), dtype=z.dtype, device=z.device).expand_as(z)
        if steps:  # qrelu: the window tested on z itself, exactly as the exact backward does
            surrogate = F._window_backward(ones, z, rule.window, steps, mode)
        else:
            surrogate = rule.fused(ones, z)
        ctx.compact = True
        ctx.kept = ("1-bit mask", "sste's surrogate is 0/1")
        ctx.state_backward = functools.partial(_mask_backward, z.shape, z.dtype)
        ctx.save_for_backward(pack_bools((surrogate != 0).reshape(-1)))
        return True
    ctx.kept_why = rebuild.why_not(z) if recipe is None else "the rebuild of z was not bitwise (kept z)"
    return False


def _rebuilt_backward(recipe, rule, weighted: bool, steps: int, mode: str, saved, g: Tensor) -> Tensor:
    return F._backward_from_z(g, recipe.run(), rule, weighted, steps, mode)


def _mask_backward(shape: torch.Size, dtype: torch.dtype, saved, g: Tensor) -> Tensor:
    """``g * s`` for a 0/1 surrogate ``s`` kept by :func:`packed_state`; zeros are +0.0 as in the exact backward."""
    (data,) = saved
    mask = lookup(data, _table((0, 1), dtype, data.device), math.prod(shape)).view(shape)
    return torch.ops.aten.threshold_backward(g, mask, 0)
