"""The parts that :class:`~lightning_ftprop.FTPropCallback` and :class:`~lightning_ftprop.FTPropMixin` are built from.

Both integrations do the same three things, with the same code:

* **swap**: :func:`swap` converts a model as a spec says (:func:`lightning_ftprop.spec.apply_spec`)
  and prepares its memory mode (``"recompute"`` segments the model);
* **memory**: :class:`TrainingStepMemory`, a Lightning callback, runs each training step (forward and
  backward) under the spec's memory mode (:class:`lightning_ftprop.memory.MemoryMode`) and logs
  ``ftprop/saved_MB``, the bytes held for the backward;
* **diagnostics**: :class:`~lightning_ftprop.diagnostics.FTPropDiagnostics`, a Lightning
  callback, gathers and logs the per-layer target statistics.

**One composition.** :class:`FTPropParts` is the one callback that holds them: the spec, the swapped
layer names and the per-step parts of :func:`training_step_parts`. It calls every Lightning hook of
every part, in that list's order, and writes one checkpoint entry,
``checkpoint["callbacks"]["ftprop"]``::

    {"integration": "FTPropCallback", "spec": {...}, "layers": [...],
     "FTPropDiagnostics": {...}, "TrainingStepMemory": {}}

keyed by each part's ``state_key``. :class:`~lightning_ftprop.FTPropCallback` *is* an
:class:`FTPropParts` that also converts the model in ``setup``; the mixin converts itself and returns
an :class:`FTPropParts` from ``configure_callbacks``. So the hook order, the logged keys and the
checkpoint layout are the same both ways, and :func:`check_one_integration` (run in ``setup``) refuses
a second integration on the same Trainer.

Why parts, not a base class: the callback used to *inherit* the diagnostics and repeat the memory
hooks that the mixin added as a separate callback, so a fix to one missed the other. Composing the
same objects gives one code path for both, and each part can be tested (and replaced) on its own.

>>> from lightning_ftprop.spec import make_spec
>>> [type(part).__name__ for part in training_step_parts(make_spec(memory="packed"), log_every_n_steps=10)]
['FTPropDiagnostics', 'TrainingStepMemory']
>>> training_step_parts(make_spec(memory="exact"), log_every_n_steps=0, histogram_every_n_steps=0)
[]
>>> composite = FTPropParts(make_spec(memory="packed"), training_step_parts(make_spec(memory="packed")))
>>> sorted(composite.state_dict())
['FTPropDiagnostics', 'TrainingStepMemory', 'integration', 'layers', 'spec']
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from typing_extensions import override

from lightning_ftprop._namespace import check_trainer
from lightning_ftprop.diagnostics import LOG_DEFAULTS, FTPropDiagnostics
from lightning_ftprop.memory import MemoryMode
from lightning_ftprop.memory.report import Meter
from lightning_ftprop.spec import apply_spec, spec_differences

__all__ = [
    "STATE_KEY",
    "FTPropParts",
    "TrainingStepMemory",
    "check_one_integration",
    "check_checkpoint_entry",
    "swap",
    "training_step_parts",
]

#: Where a checkpoint keeps an integration's state: ``checkpoint["callbacks"]["ftprop"]``.
STATE_KEY = "ftprop"

#: The attribute :func:`swap` sets on the model: the names of the swapped modules.
LAYERS_ATTRIBUTE = "_ftprop_layers"


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
    model.__dict__[LAYERS_ATTRIBUTE] = list(swapped)  # what FTPropParts saves as "layers"
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


def check_one_integration(trainer: Trainer) -> None:
    """Refuse a Trainer with more than one ftprop integration (:class:`FTPropParts` or a stand-alone diagnostics).

    Two integrations would convert twice, gather every statistic twice and save two states.

    Raises:
        ValueError: naming every integration found.

    >>> import lightning.pytorch as pl
    >>> from lightning_ftprop import FTPropCallback, FTPropDiagnostics
    >>> check_one_integration(pl.Trainer(callbacks=[FTPropCallback()], logger=False))  # one: fine
    >>> check_one_integration(pl.Trainer(callbacks=[FTPropCallback(), FTPropDiagnostics()], logger=False))
    Traceback (most recent call last):
    ...
    ValueError: the Trainer has 2 ftprop integrations (FTPropCallback, FTPropDiagnostics); use exactly one: FTPropCallback in Trainer(callbacks=...), or a model with FTPropMixin (which adds its own), and no extra FTPropDiagnostics (both already log the target statistics)
    """
    found = [cb for cb in trainer.callbacks if isinstance(cb, (FTPropParts, FTPropDiagnostics))]
    if len(found) > 1:
        names = ", ".join(getattr(cb, "integration", type(cb).__name__) for cb in found)
        raise ValueError(
            f"the Trainer has {len(found)} ftprop integrations ({names}); use exactly one: FTPropCallback in "
            "Trainer(callbacks=...), or a model with FTPropMixin (which adds its own), and no extra "
            "FTPropDiagnostics (both already log the target statistics)"
        )


def check_checkpoint_entry(
    entry: Mapping[str, Any], spec: Mapping[str, Any], layers: Sequence[str], owner: str
) -> None:
    """Refuse a checkpoint entry whose spec or swapped layers differ from the running model's.

    Raises:
        ValueError: the message lists the differences (``checkpoint != owner``).

    >>> from lightning_ftprop.spec import make_spec
    >>> check_checkpoint_entry({"spec": make_spec("sign"), "layers": ["1"]}, make_spec("step"), ["1"], "FTPropCallback")
    Traceback (most recent call last):
    ...
    ValueError: the checkpoint was trained with a different ftprop spec (checkpoint != FTPropCallback): activation: 'sign' != 'step'. Build FTPropCallback with the checkpoint's arguments to resume it.
    """
    differences = spec_differences(entry.get("spec", {}), spec)
    if differences:
        raise ValueError(
            f"the checkpoint was trained with a different ftprop spec (checkpoint != {owner}): "
            + "; ".join(differences)
            + f". Build {owner} with the checkpoint's arguments to resume it."
        )
    saved_layers = entry.get("layers")
    if saved_layers is not None and list(saved_layers) != list(layers):
        raise ValueError(
            f"the checkpoint's threshold layers {list(saved_layers)} differ from this model's {list(layers)}; "
            "the model is not the one the checkpoint was trained with"
        )


class FTPropParts(Callback):
    """One ftprop integration on a Trainer: a spec, the swapped layers and the per-step parts, as one callback.

    Args:
        spec: the validated swap spec (:mod:`lightning_ftprop.spec`).
        parts: the per-step callbacks, usually :func:`training_step_parts`; every Lightning hook of
            the composite calls the same hook of each part, in this order.
        integration: who converts the model, ``"FTPropCallback"`` or ``"FTPropMixin"``; saved in the
            state, and named by :func:`check_one_integration`.

    The model is converted by whoever owns the composite (``FTPropCallback.setup`` or the mixin's
    ``configure_model``); :attr:`layers` reads the names :func:`swap` recorded on it. The state
    (:meth:`state_dict`) is saved under :data:`STATE_KEY` for every subclass.

    >>> from lightning_ftprop.spec import make_spec
    >>> spec = make_spec("sign", memory="packed")
    >>> parts = FTPropParts(spec, training_step_parts(spec, log_every_n_steps=5), integration="FTPropMixin")
    >>> [type(part).__name__ for part in parts.parts], parts.state_key, parts.layers
    (['FTPropDiagnostics', 'TrainingStepMemory'], 'ftprop', [])
    """

    def __init__(
        self, spec: Mapping[str, Any], parts: Sequence[Callback] = (), integration: str = "FTPropMixin"
    ) -> None:
        #: The validated swap spec (see :mod:`lightning_ftprop.spec`), stored in checkpoints.
        self.spec: Dict[str, Any] = dict(spec)
        #: The per-step parts, in the order their hooks run.
        self.parts: List[Callback] = list(parts)
        self.integration = integration
        self._model: Optional[weakref.ref] = None  # set in setup; not pickled (see __getstate__)

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_model": None}  # a weak reference cannot be pickled (ddp_spawn pickles callbacks)

    @property
    @override
    def state_key(self) -> str:
        """:data:`STATE_KEY` for this class and every subclass."""
        return STATE_KEY

    @property
    def layers(self) -> List[str]:
        """The names of the modules swapped in the model this integration runs on (``[]`` before ``setup``)."""
        model = None if self._model is None else self._model()
        return list(getattr(model, LAYERS_ATTRIBUTE, None) or [])

    @property
    def diagnostics(self) -> Optional[FTPropDiagnostics]:
        """The diagnostics part, or None when both logging options are 0."""
        return next((part for part in self.parts if isinstance(part, FTPropDiagnostics)), None)

    @property
    def latest(self) -> Dict[str, float]:
        """The statistics of the last logged step (see :attr:`FTPropDiagnostics.latest`); ``{}`` without diagnostics."""
        return {} if self.diagnostics is None else self.diagnostics.latest

    def convert(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Convert ``pl_module`` in ``setup``; the base class does nothing (the mixin converts itself)."""

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_trainer(trainer, pl_module, type(self).__name__)
        check_one_integration(trainer)
        self._model = weakref.ref(pl_module)
        self.convert(trainer, pl_module)
        for part in self.parts:
            part.setup(trainer, pl_module, stage)

    @override
    def state_dict(self) -> Dict[str, Any]:
        """``{"integration", "spec", "layers", <each part's state_key>: <its state>}``, as plain data."""
        state: Dict[str, Any] = {"integration": self.integration, "spec": dict(self.spec), "layers": self.layers}
        state.update({part.state_key: part.state_dict() for part in self.parts})
        return state

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Check the saved spec and layers (:func:`check_checkpoint_entry`), then resume every part's state.

        Raises:
            ValueError: the checkpoint's spec or swapped layers differ (the message lists the differences).
        """
        check_checkpoint_entry(state_dict, self.spec, self.layers, self.integration)
        for part in self.parts:
            if part.state_key in state_dict:
                part.load_state_dict(state_dict[part.state_key])


def _forward_to_parts(name: str) -> Callable[..., None]:
    def hook(self: FTPropParts, *args: Any, **kwargs: Any) -> None:
        for part in self.parts:
            getattr(part, name)(*args, **kwargs)

    hook.__name__ = hook.__qualname__ = name
    hook.__doc__ = f"Calls ``{name}`` of every part, in order."
    return hook


#: The Lightning hooks :class:`FTPropParts` forwards to its parts (``setup`` is its own).
FORWARDED_HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_") or name == "teardown")
for _name in FORWARDED_HOOKS:
    setattr(FTPropParts, _name, _forward_to_parts(_name))
