"""``FTPropCallback``: one callback turns an existing Lightning project into a hard-threshold one.

    trainer = Trainer(callbacks=[FTPropCallback("sign", "soft_hinge", exclude="head.*")])
    trainer.fit(model)                       # the model's ReLUs (GELUs, ...) train as sign units

or in a LightningCLI config::

    trainer:
      callbacks:
        - class_path: lightning_ftprop.FTPropCallback
          init_args: {activation: qrelu, rule: sste, unit_kwargs: {thresholds: 5}}

What it does, and when (see Lightning's hook order):

* ``__init__`` validates every argument (unknown activation, rule, mapping key, unit argument).
* ``setup`` swaps the activations with :func:`lightning_ftprop.convert` on every rank, before a
  checkpoint's weights load, before the strategy moves and wraps the model (DDP, SyncBatchNorm) and
  before the optimizers are built. It is idempotent, so ``fit``, ``validate`` and ``test`` on the
  same model are fine. A model with nothing to swap is an error.
* The spec (:mod:`lightning_ftprop.spec`) and the swapped layer names are saved in the checkpoint;
  ``trainer.fit(model, ckpt_path=...)`` resumes with the threshold units in place, and a checkpoint
  whose spec disagrees with the callback's is an error.
* At the first ``setup`` it logs how many activations were swapped, excluded by the user and left
  in float: one info line, and the hyperparameters ``ftprop/swapped``, ``ftprop/excluded`` and
  ``ftprop/left`` of every logger;
  :func:`lightning_ftprop.convert` warns, naming them, when any is left.
* ``memory`` sets how much a training step holds between forward and backward (see
  :mod:`lightning_ftprop.memory`): ``"recompute"`` segments the model in ``setup``; ``"packed"`` and
  ``"recompute"`` enter :func:`~lightning_ftprop.memory.packed` in ``on_train_batch_start`` and leave
  it in ``on_train_batch_end``, so the forward (where tensors are packed) and the backward of every
  training step run inside it. Validation and test run as usual. The mode is stored in the spec.
* The per-layer target statistics of :class:`~lightning_ftprop.diagnostics.FTPropDiagnostics` are
  logged every ``log_every_n_steps`` steps.

**How it is built.** The callback *is* an :class:`~lightning_ftprop.parts.FTPropParts`, the composite
:class:`~lightning_ftprop.FTPropMixin` returns from ``configure_callbacks``, plus one step: it converts
the model in ``setup`` (:func:`~lightning_ftprop.parts.swap`). Its parts are those of
:func:`~lightning_ftprop.parts.training_step_parts`: ``callback.diagnostics``
(:class:`~lightning_ftprop.diagnostics.FTPropDiagnostics`, None when both logging options are 0) and a
:class:`~lightning_ftprop.parts.TrainingStepMemory`. So the hook order, the logged keys and the
checkpoint layout are the mixin's.

**Checkpoints and subclasses.** The state (spec, swapped layer names, each part's state) is saved under
the ``state_key`` ``"ftprop"`` (:data:`~lightning_ftprop.parts.STATE_KEY`), the same for every
subclass and for the mixin, so a subclass resumes its own state and
:func:`lightning_ftprop.checkpoint.load_checkpoint_model` finds it. Every hook carries ``@override``.

>>> callback = FTPropCallback("qrelu", "sste", mapping={"ReLU": "sign", "Tanh": ("qrelu", {"thresholds": 5})})
>>> callback.spec["mapping"]
{'ReLU': 'sign', 'Tanh': ['qrelu', {'thresholds': 5}]}
>>> class MyCallback(FTPropCallback):
...     pass
>>> MyCallback().state_key
'ftprop'

It never patches ``forward``. Use it with ``lightning.pytorch``; a ``pytorch_lightning`` Trainer is
refused with an explanation. For a model that must reload as a threshold network with
``MyModule.load_from_checkpoint`` (no Trainer involved), use :class:`~lightning_ftprop.FTPropMixin`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_ftprop.diagnostics import LOG_DEFAULTS
from lightning_ftprop.memory import DEFAULT_MEMORY
from lightning_ftprop.parts import STATE_KEY, FTPropParts, swap, training_step_parts
from lightning_ftprop.rules import DEFAULT_RULE
from lightning_ftprop.spec import make_spec

__all__ = ["FTPropCallback", "STATE_KEY"]


class FTPropCallback(FTPropParts):
    """Swap a LightningModule's activations for threshold units and log FTPROP diagnostics.

    Args:
        activation: the threshold unit: ``"sign"``, ``"step"`` or ``"qrelu"``.
        rule: the learning rule, a name from :func:`lightning_ftprop.available_rules`.
        weighted: weight each unit's loss by ``|dL/dh|`` (the paper's default).
        include: glob pattern(s) on module names; only matching activations are swapped.
        exclude: glob pattern(s) on module names to leave alone (wins over ``include``).
        mapping: ``{activation class name: target}``, replacing the default table (every common
            ``torch.nn`` activation -> ``activation``). A target is a unit name, a pair
            ``(unit name, {argument: value})`` (a two-element list in YAML) with that target's own
            unit arguments, or ``None`` to keep the class in float.
        unit_kwargs: unit arguments for every target, e.g. ``{"thresholds": 5, "mode": "per_threshold"}``
            for qrelu (a target's own arguments in ``mapping`` win).
        log_every_n_steps: log the target statistics every this many optimizer steps; 0: never.
        histogram_every_n_steps: with a ``WandbLogger``, log pre-activation histograms every this
            many steps; 0: never.
        memory: ``"exact"``, ``"packed"`` or ``"recompute"`` (see :mod:`lightning_ftprop.memory`;
            the default and why it is the default are documented there as ``DEFAULT_MEMORY``).

    Raises:
        ValueError, TypeError: for invalid arguments, naming the bad value and the allowed ones.

    The arguments are checked and stored as the spec when the callback is built, before any Trainer:

    >>> callback = FTPropCallback("qrelu", "sste", exclude="head.*", unit_kwargs={"thresholds": 5})
    >>> callback  # doctest: +NORMALIZE_WHITESPACE
    FTPropCallback(activation='qrelu', rule='sste', weighted=True, include=None, exclude=['head.*'],
                   mapping=None, unit_kwargs={'thresholds': 5}, memory='packed')
    >>> FTPropCallback("relu")
    Traceback (most recent call last):
    ...
    ValueError: unknown activation 'relu'; valid activations are: sign, step, qrelu
    """

    def __init__(
        self,
        activation: str = "sign",
        rule: str = DEFAULT_RULE,
        weighted: bool = True,
        include: Optional[Union[str, List[str]]] = None,
        exclude: Optional[Union[str, List[str]]] = None,
        mapping: Optional[Dict[str, Any]] = None,
        unit_kwargs: Optional[Dict[str, Any]] = None,
        log_every_n_steps: int = LOG_DEFAULTS["log_every_n_steps"],
        histogram_every_n_steps: int = LOG_DEFAULTS["histogram_every_n_steps"],
        memory: str = DEFAULT_MEMORY,
    ) -> None:
        spec = make_spec(activation, rule, weighted, include, exclude, mapping, unit_kwargs, memory=memory)
        log = {"log_every_n_steps": log_every_n_steps, "histogram_every_n_steps": histogram_every_n_steps}
        super().__init__(spec, training_step_parts(spec, **log), integration="FTPropCallback")
        #: ``{"swapped", "excluded", "left"}`` counts of the last swap, logged once as hyperparameters.
        self.counts: Dict[str, int] = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec.items())
        return f"{type(self).__name__}({args})"

    # --- the one step the mixin does itself: convert the model in setup ------------------------------

    @override
    def convert(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Swap ``pl_module``'s activations (idempotent) and report the counts once per model."""
        counts = swap(pl_module, self.spec).counts()
        if counts != self.counts:  # once per model, not again for validate/test on the same model
            self.counts = counts
            rank_zero_info(
                f"{type(self).__name__}: {counts['swapped']} activations swapped for {self.spec['activation']} "
                f"units, {counts['excluded']} excluded, {counts['left']} left in float (unmatched)"
            )
            for logger in trainer.loggers:  # hyperparameters: the run's config, not a time series
                logger.log_hyperparams({f"ftprop/{key}": value for key, value in counts.items()})
