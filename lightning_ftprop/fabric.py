"""Lightning Fabric: threshold units, a memory mode and the target statistics in a loop you write.

Fabric users write their own training loop, so there is no callback to add. :class:`FabricFTProp` is built
from the parts the callback uses (:func:`~lightning_ftprop.parts.swap`,
:class:`~lightning_ftprop.memory.MemoryMode`, :class:`~lightning_ftprop.diagnostics.FTPropDiagnostics`)::

    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2)
    fabric.launch()
    model = Net()
    ftprop = FabricFTProp(model, "sign", memory="packed", log_every_n_steps=10)  # before fabric.setup
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for step, (x, y) in enumerate(fabric.setup_dataloaders(loader)):
        with ftprop.step(step):                 # the memory mode; the statistics on logging steps
            fabric.backward(F.cross_entropy(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        fabric.log_dict(ftprop.stats(), step=step)   # every rank calls it: the counts are summed over ranks

Convert before ``fabric.setup`` (which wraps the model in DDP and moves it), as the callback converts in
``setup``. The forward and the backward both go inside ``step``: the memory mode decides what the
forward keeps, and the statistics are read in the backward. ``stats()`` returns ``{}`` on steps that do
not log (global steps 0, n, 2n, ... log); on the others it returns the same keys the callback logs,
``ftprop/<layer>/<stat>``, summed over the ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List

from torch import nn

from lightning_ftprop.diagnostics import LOG_DEFAULTS, FTPropDiagnostics
from lightning_ftprop.memory import MemoryMode
from lightning_ftprop.parts import swap
from lightning_ftprop.spec import make_spec

__all__ = ["FabricFTProp"]


class FabricFTProp:
    """Convert ``model`` (in place) and run training steps under a memory mode, gathering target statistics.

    ``activation`` and the keyword arguments are :class:`~lightning_ftprop.FTPropCallback`'s (``rule``,
    ``memory``, ``include``, ``exclude``, ``mapping``, ...); ``log_every_n_steps`` (0: never) says which
    steps gather statistics.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> ftprop = FabricFTProp(model, "sign", memory="packed", log_every_n_steps=2)
    >>> ftprop.layers, type(model[1]).__name__
    (['1'], 'Sign')
    >>> with ftprop.step(0):
    ...     model(torch.randn(16, 4)).square().mean().backward()
    >>> sorted(ftprop.stats())
    ['ftprop/1/ignored', 'ftprop/1/loss', 'ftprop/1/mismatch', 'ftprop/1/saturated']
    >>> with ftprop.step(1):                  # not a logging step: nothing gathered
    ...     model(torch.randn(16, 4)).square().mean().backward()
    >>> ftprop.stats()
    {}
    """

    def __init__(
        self,
        model: nn.Module,
        activation: str = "sign",
        log_every_n_steps: int = LOG_DEFAULTS["log_every_n_steps"],
        **spec: Any,
    ) -> None:
        self.spec = make_spec(activation, **spec)
        #: The names of the swapped modules.
        self.layers: List[str] = list(swap(model, self.spec))
        self.mode = MemoryMode(self.spec["memory"])
        self.diagnostics = FTPropDiagnostics(log_every_n_steps=log_every_n_steps, histogram_every_n_steps=0)
        if log_every_n_steps:
            self.diagnostics._attach(model)
        self._gathered = False

    @contextlib.contextmanager
    def step(self, global_step: int) -> Iterator[None]:
        """One training step's forward and backward: under the memory mode, gathering on logging steps."""
        self.diagnostics._begin_stats(global_step)
        self._gathered = self.diagnostics._gather_stats
        self.mode.begin_step()
        try:
            yield
        finally:
            self.mode.end_step()
            self.diagnostics._gather_stats = False

    def stats(self) -> Dict[str, float]:
        """The last step's statistics summed over the ranks (every rank must call it), or ``{}``."""
        if not self._gathered:
            return {}
        self._gathered = False
        return self.diagnostics._compute_stats()

    @property
    def latest(self) -> Dict[str, float]:
        """The statistics of the last step that logged."""
        return self.diagnostics.latest
