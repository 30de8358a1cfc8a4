"""How many bytes autograd holds between the forward and the backward: :func:`saved_bytes`, device-independent.

:func:`saved_bytes` runs one training forward under a memory mode with a
:class:`~lightning_ftprop.memory.report.Meter` (which says what is counted) and returns a
:class:`SavedBytes`. The count is what autograd's saved state holds, on any device and dtype (bf16
autocast, a compiled model called inside the mode), without the allocator's noise: the benchmarks
measure RSS and ``max_memory_allocated`` beside it.

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
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional

import torch
from torch import Tensor, nn

from lightning_ftprop.memory.modes import DEFAULT_MEMORY, MemoryMode, check_memory
from lightning_ftprop.memory.recompute import is_recomputed
from lightning_ftprop.memory.report import Meter

__all__ = ["SavedBytes", "saved_bytes"]


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
