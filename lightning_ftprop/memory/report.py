"""Counting the bytes autograd holds between the forward and the backward: :class:`Meter`.

Every tensor autograd saves for the backward passes through a saved-tensor pack hook. While a
:class:`Meter` is active in the thread, the memory modes' hooks (:func:`~lightning_ftprop.memory.packed`,
:func:`~lightning_ftprop.memory.recompute`; for ``"exact"`` an identity hook) hand it what they keep,
and it counts the bytes, each storage once:

* a plain tensor: the bytes of its storage (a view counts the storage it views, once);
* a packed tensor (bits, small integers): the bytes of its codes;
* a reference to a module call that is run again in the backward: nothing (what the call's re-run
  needs is counted where it is stored);
* parameters, buffers and the model's inputs: nothing (they are held anyway).

Bytes are attributed to the innermost module running when the tensor was saved.
:func:`lightning_ftprop.memory.saved_bytes` (:mod:`~lightning_ftprop.memory.measure`) runs one forward
under a mode with a :class:`Meter`; the Lightning callback logs a step's total as ``ftprop/saved_MB``.

>>> import torch
>>> from torch import nn
>>> import lightning_ftprop as ftp
>>> model = nn.Sequential(nn.Linear(8, 16), ftp.Sign(), nn.Linear(16, 2))
>>> with Meter(model) as meter, ftp.memory.packed():
...     out = model(torch.randn(4, 8))
>>> meter.by_module   # the input (float32), the unit's z (float32, after a matmul), its output in bits
{'0': 128, '1': 256, '2': 8}
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional

from torch import Tensor, nn

__all__ = ["Meter", "active_meter", "metered"]


class _Active(threading.local):
    meter: Optional[Meter] = None


_ACTIVE = _Active()


def active_meter() -> Optional[Meter]:
    """The :class:`Meter` counting in this thread now, or None.

    >>> with Meter() as meter:
    ...     active_meter() is meter
    True
    """
    return _ACTIVE.meter


def metered(pack_hook: Callable[[Tensor], Any]) -> Callable[[Tensor], Any]:
    """``pack_hook``, counting what it keeps when a meter is active (else ``pack_hook`` itself).

    >>> import torch
    >>> def keep(t):
    ...     return t
    >>> metered(keep) is keep                # no meter: the hook itself
    True
    >>> with Meter() as meter:
    ...     _ = metered(keep)(torch.zeros(10))
    >>> meter.total
    40
    """
    meter = _ACTIVE.meter
    if meter is None:
        return pack_hook

    def hook(x: Tensor) -> Any:
        return meter.count(pack_hook(x))

    return hook


class Meter:
    """Counts what the memory modes' hooks keep while it is active (``with meter:``); per module when a
    model is given (forward hooks on its modules, removed on exit).

    >>> import torch
    >>> from lightning_ftprop import memory
    >>> w = torch.randn(1000, requires_grad=True)
    >>> with Meter() as meter, memory.packed():
    ...     y = (w * torch.randn(1000)).sum()     # w * r saves r, what the gradient of w needs
    >>> meter.total
    4000
    """

    def __init__(self, model: Optional[nn.Module] = None, exclude: Any = ()):
        self.model = model
        self.total = 0
        self.by_module: Dict[str, int] = {}
        self._seen: set = set()
        self._stack: List[str] = []
        self._handles: list = []
        self._excluded = {_storage_key(t) for t in exclude if isinstance(t, Tensor)}
        if model is not None:
            self._excluded |= {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
        self._previous: Optional[Meter] = None

    def __enter__(self) -> Meter:
        if self.model is not None:
            for name, module in self.model.named_modules():
                self._handles.append(module.register_forward_pre_hook(self._enter(name or "<model>")))
                self._handles.append(module.register_forward_hook(self._leave, always_call=True))
        self._previous, _ACTIVE.meter = _ACTIVE.meter, self
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.meter = self._previous
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _enter(self, name: str):
        def hook(module, args):
            self._stack.append(name)

        return hook

    def _leave(self, module, args, output):
        if self._stack:
            self._stack.pop()

    def count(self, kept: Any) -> Any:
        """Add the bytes of ``kept`` (what a pack hook returned) once; returns ``kept``."""
        tensor = kept if isinstance(kept, Tensor) else getattr(kept, "data", None)
        if not isinstance(tensor, Tensor) or isinstance(tensor, nn.Parameter):
            return kept  # a reference to a module call (rebuilt in the backward), or a parameter (FSDP2's unsharded)
        tensor = _local(tensor)
        key = _storage_key(tensor)
        if key in self._seen or key in self._excluded:
            return kept
        self._seen.add(key)
        nbytes = tensor.untyped_storage().nbytes()
        self.total += nbytes
        if self.model is not None:
            name = self._stack[-1] if self._stack else "<outside any module>"
            self.by_module[name] = self.by_module.get(name, 0) + nbytes
        return kept


def _local(t: Tensor) -> Tensor:
    """A DTensor's (FSDP2, tensor parallel) local shard, whose storage is real; any other tensor as it is."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _storage_key(t: Tensor):
    t = _local(t)
    return (t.device, t.untyped_storage().data_ptr()) if t.untyped_storage().nbytes() else ("empty", id(t))
