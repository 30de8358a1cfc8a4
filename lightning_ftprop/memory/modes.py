"""The memory modes and how one is applied to a model, step by step (:class:`MemoryMode`)."""

from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

from torch import nn

from lightning_ftprop.memory.hooks import packed
from lightning_ftprop.memory.recompute import recompute

__all__ = ["MEMORY_MODES", "DEFAULT_MEMORY", "check_memory", "MemoryMode"]

#: The valid ``memory=`` values, from most to least held memory.
MEMORY_MODES: Tuple[str, ...] = ("exact", "packed", "recompute")


#: The default of ``FTPropCallback(memory=...)`` and of the spec's ``memory`` key. ``"packed"``
#: because it changes no bit of any gradient, costs 1.05-1.12x the exact step time (CPU), and holds
#: 0.50x (resnet18) to 0.71x (alexnet_dorefa) of the ReLU network's memory where ``"exact"`` holds
#: 1.15-1.42x (benchmarks/RESULTS.md, section 5). ``"recompute"`` holds far less but re-runs every
#: segment's forward (1.41-1.61x the ReLU step time on the CPU), a cost users should opt into.
DEFAULT_MEMORY = "packed"


def check_memory(memory: str) -> str:
    """Validate a memory mode (one of :data:`MEMORY_MODES`): TypeError for a non-string, ValueError otherwise."""
    if not isinstance(memory, str):
        raise TypeError(f"memory must be a string, one of {', '.join(MEMORY_MODES)}; got {memory!r}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory!r}; valid modes are: {', '.join(MEMORY_MODES)}")
    return memory


class MemoryMode:
    """Applies one memory mode to a model, step by step.

    mode = MemoryMode("recompute")
    mode.prepare(model)        # recompute(model) for "recompute"; idempotent
    mode.begin_step()          # enters packed() for "packed" and "recompute"
    ...forward and backward...
    mode.end_step()
    """

    def __init__(self, memory: str = "exact"):
        self.memory = check_memory(memory)
        self._stack: Optional[contextlib.ExitStack] = None

    def prepare(self, model: nn.Module) -> List[str]:
        """Segment ``model`` for ``"recompute"`` (and undo a previous segmentation otherwise)."""
        if self.memory == "recompute":
            return recompute(model)
        return recompute(model, enable=False)

    def begin_step(self) -> None:
        self.end_step()
        if self.memory != "exact":
            self._stack = contextlib.ExitStack()
            self._stack.enter_context(packed())

    def end_step(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()
