"""How many bytes autograd holds between the forward and the backward: :func:`saved_bytes`, device-independent.

Every tensor autograd saves for the backward passes through a saved-tensor pack hook. While a
:class:`Meter` is active in the thread, the memory modes' hooks (:func:`~lightning_ftprop.memory.packed`,
:func:`~lightning_ftprop.memory.recompute`; for ``"exact"`` an identity hook) hand it what they keep,
and it counts the bytes, each storage once:

* a plain tensor: the bytes of its storage (a view counts the storage it views, once);
* a packed tensor (bits, small integers): the bytes of its codes;
* a reference to a module call that is run again in the backward: nothing (what the call's re-run
  needs is counted where it is stored);
* parameters, buffers and the model's inputs: nothing (they are held anyway).

Bytes are attributed to the innermost module running when the tensor was saved. The count is what
autograd's saved state holds, on any device and dtype (bf16 autocast, a compiled model called inside
the mode), without the allocator's noise: the benchmarks measure RSS and ``max_memory_allocated``
beside it.

>>> import torch
>>> from torch import nn
>>> import lightning_ftprop as ftp
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), ftp.Sign(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
>>> x = torch.randn(4, 3, 8, 8)
>>> exact, packed = saved_bytes(model, x, mode="exact"), saved_bytes(model, x, mode="packed")
>>> exact.by_module["2"], packed.by_module.get("2", 0)     # the unit: z as float32, or nothing (rebuilt)
(4608, 0)
>>> exact.by_module["4"], packed.by_module["4"]     # the linear's input: float32, or 1 bit each
(4608, 144)
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import Tensor, nn

__all__ = ["Meter", "SavedBytes", "saved_bytes", "active_meter", "metered"]


@dataclass
class SavedBytes:
    """What :func:`saved_bytes` returns: total bytes held for the backward, and per module (call order).

    >>> report = SavedBytes(total=3 * 2**20, by_module={"conv": 2**20, "linear": 2 * 2**20}, mode="packed")
    >>> report.megabytes
    3.0
    >>> print(report)
    saved for the backward (memory='packed'): 3.00 MB
      conv      1.00 MB
      linear    2.00 MB
    """

    total: int
    by_module: Dict[str, int] = field(default_factory=dict)
    mode: str = ""

    @property
    def megabytes(self) -> float:
        """``total`` in MiB."""
        return self.total / 2**20

    def __str__(self) -> str:
        width = max((len(name) for name in self.by_module), default=0)
        lines = [f"saved for the backward (memory={self.mode!r}): {self.megabytes:.2f} MB"]
        lines += [f"  {name.ljust(width)}  {n / 2**20:6.2f} MB" for name, n in self.by_module.items()]
        return "\n".join(lines)


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


@contextlib.contextmanager
def _effects_undone(model: nn.Module) -> Iterator[None]:
    """Buffers (BatchNorm statistics) restored after a training-mode forward; the mode restored too."""
    buffers = copy.deepcopy({name: b for name, b in model.named_buffers()})
    training = model.training
    try:
        yield
    finally:
        model.train(training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


def saved_bytes(model: nn.Module, *args: Any, mode: Optional[str] = None, **kwargs: Any) -> SavedBytes:
    """The bytes autograd holds for the backward after one training forward ``model(*args, **kwargs)``.

    ``mode`` is a memory mode (:data:`~lightning_ftprop.memory.MEMORY_MODES`; default
    :data:`~lightning_ftprop.memory.DEFAULT_MEMORY`). The forward runs in training mode under that mode
    (``"recompute"`` prepares the model for the call and runs one forward first, which finds its
    segments), on whatever path the caller sets up: call it inside ``torch.autocast`` for mixed
    precision, or pass a ``torch.compile``'d model. No backward runs and buffers are restored.

    >>> import torch, torchvision
    >>> import lightning_ftprop as ftp
    >>> twin = torchvision.models.resnet18(num_classes=10)
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> _ = ftp.convert(model, "sign")
    >>> x = torch.randn(8, 3, 64, 64)
    >>> float_mb = saved_bytes(twin, x, mode="exact").megabytes
    >>> round(saved_bytes(model, x).megabytes / float_mb, 2)          # the default, packed, fp32
    0.5
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):              # bf16 autocast, against its float twin
    ...     print(round(saved_bytes(model, x).megabytes / saved_bytes(twin, x, mode="exact").megabytes, 2))
    0.13
    """
    from lightning_ftprop.memory.modes import DEFAULT_MEMORY, MemoryMode, check_memory
    from lightning_ftprop.memory.recompute import is_recomputed

    mode = check_memory(DEFAULT_MEMORY if mode is None else mode)
    runner = MemoryMode(mode)
    segmented = mode == "recompute" and not is_recomputed(model)  # prepared here, undone after
    if segmented:
        runner.prepare(model)
    inputs = [t for t in list(args) + list(kwargs.values()) if isinstance(t, Tensor)]
    try:
        with _effects_undone(model):
            model.train()
            if mode == "recompute":  # the first training forward finds the segments
                runner.begin_step()
                try:
                    model(*args, **kwargs)
                finally:
                    runner.end_step()
            with Meter(model, exclude=inputs) as meter:
                runner.begin_step()
                try:
                    out = model(*args, **kwargs)
                finally:
                    runner.end_step()
            del out
    finally:
        if segmented:
            MemoryMode("exact").prepare(model)
    return SavedBytes(meter.total, meter.by_module, mode)
