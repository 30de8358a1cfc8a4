"""The memory modes and how one is applied to a model, step by step (:class:`MemoryMode`)."""

from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import torch
from torch import nn

from lightning_ftprop.memory import report
from lightning_ftprop.memory.hooks import packed
from lightning_ftprop.memory.recompute import recompute

__all__ = ["MEMORY_MODES", "DEFAULT_MEMORY", "check_memory", "MemoryMode"]

#: The valid ``memory=`` values, from most to least held memory.
MEMORY_MODES: Tuple[str, ...] = ("exact", "packed", "recompute")


#: The default of ``FTPropCallback(memory=...)`` and of the spec's ``memory`` key. ``"packed"``, from
#: the figures of the default rule (sign/soft_hinge, FTP-SH; benchmarks/RESULTS.md, section 5, CPU, RSS,
#: against the float network on the same path), on each path people train with:
#:
#: * fp32 eager: 0.49x (resnet18) and 0.66x (convnet4), gradients bitwise those of ``"exact"``, for
#:   0.99-1.06x the exact step time (0.92-0.96x ReLU's throughput on resnet18, 0.95-1.04x on convnet4);
#: * bf16 autocast: 0.30x and 0.47x, bitwise on the CPU, for 1.04-1.08x;
#: * ``torch.compile``: 0.82x and 0.95x, bitwise the compiled exact units, for 1.10-1.16x;
#: * CUDA (one H200, resnet18 at 224x224, ``memory_allocated``): 0.49x fp32 and 0.47x bf16, for 2.4-2.7x
#:   the exact step time, bound by Python and kernel launches per unit (no fused kernels yet).
#:
#: ``"recompute"`` holds far less in eager mode (0.00-0.01x on the convnets and ResNets, 0.44x GPT-2,
#: 0.61x BERT) but re-runs the forward's module calls (about 1.5x the ReLU step time) and refuses
#: ``create_graph``: a cost users should opt into.
DEFAULT_MEMORY = "packed"


def check_memory(memory: str) -> str:
    """Validate a memory mode (one of :data:`MEMORY_MODES`): TypeError for a non-string, ValueError otherwise.

    >>> check_memory("packed")
    'packed'
    """
    if not isinstance(memory, str):
        raise TypeError(f"memory must be a string, one of {', '.join(MEMORY_MODES)}; got {memory!r}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory!r}; valid modes are: {', '.join(MEMORY_MODES)}")
    return memory


def _same(t):
    return t


class MemoryMode:
    """Applies one memory mode to a model, step by step (what the Lightning callback and mixin use).

    ``memory`` is one of :data:`MEMORY_MODES` (``MemoryMode(DEFAULT_MEMORY)`` for the default).

    >>> import torch
    >>> from torch import nn
    >>> import lightning_ftprop as ftp
    >>> model = nn.Sequential(nn.Linear(4, 8), ftp.Sign(), nn.Linear(8, 2))
    >>> mode = MemoryMode("packed")
    >>> mode.prepare(model)        # segments the model for "recompute"; nothing to do here
    []
    >>> mode.begin_step()          # enters packed() for "packed" and "recompute"
    >>> model(torch.randn(3, 4)).sum().backward()
    >>> mode.end_step()
    """

    def __init__(self, memory: str):
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
        elif report.active_meter() is not None:  # count what plain autograd keeps
            self._stack = contextlib.ExitStack()
            self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(report.metered(_same), _same))

    def end_step(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()
