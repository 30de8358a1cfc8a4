"""The parts that :class:`~lightning_ftprop.FTPropCallback` and :class:`~lightning_ftprop.FTPropMixin` are built from.

Both integrations do the same three things, with the same code:

* **swap**: :func:`swap` converts a model as a spec says (:func:`lightning_ftprop.spec.apply_spec`)
  and prepares its memory mode (``"recompute"`` segments the model);
* **memory**: :class:`TrainingStepMemory`, a Lightning callback, runs each training step (forward and
  backward) under the spec's memory mode (:class:`lightning_ftprop.memory.MemoryMode`) and logs
  ``ftprop/saved_MB``, the bytes held for the backward;
* **diagnostics**: :class:`~lightning_ftprop.diagnostics.FTPropDiagnostics`, a Lightning
  callback, gathers and logs the per-layer target statistics.

:func:`training_step_parts` builds the two per-step callbacks for a spec and its logging options. The mixin
returns them from ``configure_callbacks``, so the Trainer calls them directly. The callback holds
them as attributes (``callback.diagnostics``, ``callback.step_memory``) and calls their hooks from its
own: a Lightning callback cannot add callbacks to the Trainer, and holding them keeps one object in
``Trainer(callbacks=[...])`` and one entry in the checkpoint. Either way each per-step hook is
written once, here or in :mod:`lightning_ftprop.diagnostics`.

Why parts, not a base class: the callback used to *inherit* the diagnostics and repeat the memory
hooks that the mixin added as a separate callback, so a fix to one missed the other. Composing the
same objects gives one code path for both, and each part can be tested (and replaced) on its own.

>>> from lightning_ftprop.spec import make_spec
>>> [type(part).__name__ for part in training_step_parts(make_spec(memory="packed"), log_every_n_steps=10)]
['FTPropDiagnostics', 'TrainingStepMemory']
>>> training_step_parts(make_spec(memory="exact"), log_every_n_steps=0, histogram_every_n_steps=0)
[]
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from typing_extensions import override

from lightning_ftprop.diagnostics import LOG_DEFAULTS, FTPropDiagnostics
from lightning_ftprop.memory import MemoryMode
from lightning_ftprop.memory.report import Meter
from lightning_ftprop.spec import apply_spec

__all__ = ["TrainingStepMemory", "training_step_parts", "swap"]


def swap(model: nn.Module, spec: Mapping[str, Any]) -> List[str]:
    """Convert ``model`` as ``spec`` says and prepare its memory mode (idempotent); returns the swapped names.

    The names are a :class:`~lightning_ftprop.convert.SwappedNames` list (with ``counts()``).

    >>> from torch import nn
    >>> from lightning_ftprop.spec import make_spec
    >>> swap(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), make_spec("step"))
    ['1']
    """
    swapped = apply_spec(model, spec)
    MemoryMode(spec["memory"]).prepare(model)
    return swapped


class TrainingStepMemory(Callback):
    """Runs each training step (forward and backward) under a memory mode, and logs what it holds.

    It enters the mode in ``on_train_batch_start`` and leaves it in ``on_train_batch_end`` (and on
    an exception or at teardown), so the forward, where tensors are saved, and the backward of every
    training step run inside it. Validation and test run as usual.

    Every ``log_every_n_steps`` optimizer steps (global steps 0, n, 2n, ...; 0: never) it counts the
    bytes autograd holds for that step's backward (:class:`~lightning_ftprop.memory.report.Meter`, as
    :func:`~lightning_ftprop.memory.saved_bytes` does) and logs ``ftprop/saved_MB``.

    >>> TrainingStepMemory("packed").mode.memory
    'packed'
    """

    def __init__(self, memory: str, log_every_n_steps: int = 0) -> None:
        self.mode = MemoryMode(memory)
        self.log_every_n_steps = log_every_n_steps
        self._meter: Optional[Meter] = None

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._close_meter()
        if self.log_every_n_steps and trainer.global_step % self.log_every_n_steps == 0:
            self._meter = Meter(pl_module, exclude=[t for t in _tensors(batch)])
            self._meter.__enter__()  # before the mode: its hooks count what they keep
        self.mode.begin_step()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.mode.end_step()
        meter = self._close_meter()
        if meter is not None:
            pl_module.log("ftprop/saved_MB", meter.total / 2**20, on_step=True, on_epoch=False)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.mode.end_step()
        self._close_meter()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.mode.end_step()
        self._close_meter()

    def _close_meter(self) -> Optional[Meter]:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.__exit__(None, None, None)
        return meter


def _tensors(batch: Any) -> List[Tensor]:
    found: List[Tensor] = []
    apply_to_collection(batch, Tensor, found.append)
    return found


def training_step_parts(spec: Mapping[str, Any], **log_options: int) -> List[Callback]:
    """The per-step callbacks for ``spec``: diagnostics unless both logging options are 0, memory unless ``"exact"``.

    ``log_options`` are ``log_every_n_steps`` and ``histogram_every_n_steps`` (defaults: :data:`LOG_DEFAULTS`).

    >>> from lightning_ftprop.spec import make_spec
    >>> [type(part).__name__ for part in training_step_parts(make_spec(memory="recompute"))]
    ['FTPropDiagnostics', 'TrainingStepMemory']
    """
    options: Dict[str, int] = {**LOG_DEFAULTS, **log_options}
    parts: List[Callback] = []
    if any(options.values()):
        parts.append(FTPropDiagnostics(**options))
    if spec["memory"] != "exact" or options["log_every_n_steps"]:
        parts.append(TrainingStepMemory(spec["memory"], log_every_n_steps=options["log_every_n_steps"]))
    return parts
