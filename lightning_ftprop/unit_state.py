"""The unit-state hook point: what a threshold unit keeps for its backward, decided per thread.

A threshold unit (:mod:`lightning_ftprop.functional`) keeps its pre-activation ``z`` for the backward
(``keep="input"``), or its compact surrogate. A *policy* active in the current thread may keep
something smaller. The protocol is typed and one-way: this module imports only torch, the units call
it, and a policy (:mod:`lightning_ftprop.memory` defines the package's) never touches autograd's
``ctx``.

* In ``setup_context`` the unit builds a :class:`UnitCall` (its ``z``, rule, arguments, whether it
  would keep ``z``, and ``backward_from_z``, its exact backward given ``z``) and asks
  ``policy(call)`` for a :class:`UnitState`.
* The policy returns None (no opinion: the unit keeps what it keeps without a policy), or a
  :class:`UnitState`. A state with a ``backward`` replaces the unit's: the unit saves
  ``state.tensors`` with ``ctx.save_for_backward`` (so saved-tensor hooks see them) and its backward
  returns ``state.backward(saved_tensors, g)``. A state without one only explains (``why``) why the
  unit keeps its default state.
* :func:`use_policy` sets the policy for the current thread (for the ``with`` block), optionally tied
  to a saved-tensor pack hook: the policy then applies only while that hook is the innermost one
  (inside ``torch.utils.checkpoint`` or a user's own ``saved_tensors_hooks`` the units keep ``z``).
  :func:`float_state` is ``use_policy(None)``.
* :func:`recomputation` marks a forward re-run in the backward (``memory="recompute"``);
  :func:`recomputing` is True inside it, so forward hooks that count each forward once can skip it.

All state is thread-local, like torch's saved-tensor hooks. Under ``torch.compile`` no policy applies.

>>> import torch
>>> from lightning_ftprop import functional as F
>>> def keep_nothing(call):              # a toy policy: ste-like backward, nothing kept
...     return UnitState("nothing", "toy policy", backward=lambda saved, g: g)
>>> z = torch.randn(4, requires_grad=True)
>>> with use_policy(keep_nothing):
...     h = F.sign(z, rule="soft_hinge")
>>> h.grad_fn.kept
('nothing', 'toy policy')
>>> h.sum().backward(); z.grad
tensor([1., 1., 1., 1.])
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor

from lightning_ftprop import torch_private

__all__ = [
    "UnitCall",
    "UnitState",
    "Policy",
    "active_policy",
    "use_policy",
    "float_state",
    "recomputation",
    "recomputing",
]


@dataclass(frozen=True)
class UnitCall:
    """What a threshold unit tells a policy in its forward.

    Attributes:
        z: the pre-activation (the unit's input), with its autograd history.
        rule: the unit's :class:`~lightning_ftprop.rules.Rule`.
        weighted: the unit weights its loss by ``|g|``.
        kind: the unit's :class:`~lightning_ftprop.kinds.UnitKind` (its thresholds, values and coordinates).
        mode: the backward mode (``"single"`` or ``"per_threshold"``).
        keeps_z: whether the unit, with no policy, keeps ``z`` itself (else a compact surrogate, or nothing).
        backward_from_z: ``(g, z) -> dz``, the unit's exact backward given ``z``: a policy that rebuilds
            ``z`` calls it, and ``backward_from_z(ones, z)`` is the unit's surrogate ``S(z)``.

    >>> import torch
    >>> from lightning_ftprop import functional as F
    >>> calls = []
    >>> with use_policy(calls.append):      # a policy that records the call and keeps the default state
    ...     _ = F.sign(torch.tensor([0.5, -2.0], requires_grad=True), rule="sste")
    >>> calls[0].rule.name, calls[0].keeps_z, calls[0].backward_from_z(torch.ones(2), calls[0].z.detach())
    ('sste', True, tensor([1., 0.]))
    """

    z: Tensor
    rule: Any
    weighted: bool
    kind: Any
    mode: str
    keeps_z: bool
    backward_from_z: Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class UnitState:
    """What a policy decides a unit keeps.

    Attributes:
        kept: what is kept, in words (``"nothing"``, ``"1-bit mask"``); shown by ``summary``.
        why: the reason, in words.
        tensors: saved with ``ctx.save_for_backward`` (through any saved-tensor hooks).
        backward: ``(saved_tensors, g) -> dz``; None: the unit keeps its default state, for ``why``.

    >>> import torch
    >>> from lightning_ftprop import functional as F
    >>> def explain(call):
    ...     return UnitState("", "kept for a reason of mine")
    >>> with use_policy(explain):
    ...     F.sign(torch.randn(2, requires_grad=True) * 1, rule="soft_hinge").grad_fn.kept
    ('z (float32)', 'kept for a reason of mine')
    """

    kept: str
    why: str
    tensors: Tuple[Tensor, ...] = ()
    backward: Optional[Callable[[Tuple[Tensor, ...], Tensor], Tensor]] = None


#: ``policy(call) -> UnitState or None`` (see the module docstring).
Policy = Callable[[UnitCall], Optional[UnitState]]


class _ThreadState(threading.local):
    policy: Optional[Policy] = None
    pack_hook: Optional[Callable] = None
    recomputing: int = 0


_STATE = _ThreadState()


def active_policy() -> Optional[Policy]:
    """The policy the units of the current thread consult now, or None (they keep ``z``).

    A policy set with a ``pack_hook`` applies only while that hook is the innermost saved-tensor hook
    of the thread: inside ``torch.utils.checkpoint`` or a user's own ``saved_tensors_hooks`` (whose hooks
    receive whatever the unit saves), units keep ``z``. If torch no longer says which hook is innermost
    (a private API, :mod:`lightning_ftprop.torch_private`), such a policy does not apply, with one warning.

    >>> import torch
    >>> active_policy() is None              # by default units keep z
    True
    >>> def policy(call):
    ...     return None
    >>> def hook(t):
    ...     return t
    >>> with torch.autograd.graph.saved_tensors_hooks(hook, hook), use_policy(policy, pack_hook=hook):
    ...     print(active_policy() is policy)
    ...     with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):   # a user's hooks on top
    ...         print(active_policy())
    True
    None
    """
    if torch.compiler.is_compiling():  # traced units: lightning_ftprop.compiled decides instead
        return None
    policy = _STATE.policy
    if policy is None or _STATE.pack_hook is None:
        return policy
    top = torch_private.saved_tensors_top_hook()
    if top is None:
        return None
    hooks = top()
    return policy if hooks is not None and hooks[0] is _STATE.pack_hook else None


@contextlib.contextmanager
def use_policy(policy: Optional[Policy], pack_hook: Optional[Callable] = None) -> Iterator[None]:
    """Units run in this thread inside the block consult ``policy`` (see :func:`active_policy`).

    ``pack_hook``: the saved-tensor pack hook the policy goes with; the policy applies only while that
    hook is the innermost one.

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

    >>> with float_state():
    ...     active_policy() is None
    True
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
