"""``FTPropMixin``: a LightningModule that converts itself, and reloads as what it was trained as.

    class Net(FTPropMixin, LightningModule):          # the mixin comes first
        def __init__(self, hidden: int = 64, ftprop: Optional[dict] = None):
            super().__init__()
            self.save_hyperparameters()                 # puts ftprop in self.hparams
            self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    model = Net(ftprop={"activation": "sign", "rule": "soft_hinge"})
    Trainer(...).fit(model)
    same = Net.load_from_checkpoint(path)               # Sign units again, not ReLUs

``self.hparams["ftprop"]`` is a dict with the keys of :class:`~lightning_ftprop.FTPropCallback`
(``activation``, ``rule``, ``weighted``, ``include``, ``exclude``, ``mapping``, ``unit_kwargs``,
``memory``, ``log_every_n_steps``, ``histogram_every_n_steps``); missing keys take the callback's defaults and
``ftprop=None`` means no conversion (the float baseline). A missing ``ftprop`` entry is an error,
because it would silently train the float model.

When the swap happens:

* in ``configure_model``, after the subclass's own ``configure_model`` (the mixin wraps any
  override), so layers built there are covered. The Trainer calls it before restoring a checkpoint,
  before DDP wraps the model and before the optimizers are built. It is idempotent.
* in ``load_from_checkpoint``: Lightning calls ``configure_model`` and ``on_load_checkpoint`` before
  ``load_state_dict``, and the mixin converts in both. Threshold units have no parameters, so
  without this a checkpoint would load, silently, into the ReLU model.

The mixin is built from the same parts as :class:`~lightning_ftprop.FTPropCallback`
(:mod:`lightning_ftprop.parts`): :func:`~lightning_ftprop.parts.swap` converts (and, for
``memory="recompute"``, segments) the model, and ``configure_callbacks`` returns one
:class:`~lightning_ftprop.parts.FTPropParts`, the composite the callback itself is, holding the per-step
parts of :func:`~lightning_ftprop.parts.training_step_parts`: a
:class:`~lightning_ftprop.parts.TrainingStepMemory` that runs every training step under the memory mode
(:mod:`lightning_ftprop.memory`) and, unless ``log_every_n_steps`` and ``histogram_every_n_steps`` are
both 0, an :class:`~lightning_ftprop.diagnostics.FTPropDiagnostics`.

The spec, the swapped layer names and the parts' state are saved where the callback saves them,
``checkpoint["callbacks"]["ftprop"]``; loading a checkpoint whose spec differs from the module's is an
error, through a Trainer and through ``load_from_checkpoint`` alike.
``ftprop`` mapping values may carry per-target unit arguments, as for the callback:
``{"mapping": {"ReLU": "sign", "Tanh": ["qrelu", {"thresholds": 5}]}}``.

The class docstring of :class:`FTPropMixin` has a runnable example.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

from typing_extensions import override

from lightning_ftprop._namespace import check_class
from lightning_ftprop.diagnostics import LOG_DEFAULTS
from lightning_ftprop.parts import STATE_KEY, FTPropParts, check_checkpoint_entry, swap, training_step_parts
from lightning_ftprop.spec import spec_from_dict

__all__ = ["FTPropMixin", "HPARAMS_KEY"]

HPARAMS_KEY = "ftprop"  #: where the mixin reads its spec: ``self.hparams["ftprop"]``
_LOG_KEYS = tuple(LOG_DEFAULTS)


def _convert_after(configure_model):
    @functools.wraps(configure_model)
    def wrapper(self, *args, **kwargs):
        result = configure_model(self, *args, **kwargs)
        self.apply_ftprop()
        return result

    return wrapper


class FTPropMixin:
    """Mix into a ``lightning.pytorch.LightningModule`` subclass, before ``LightningModule``.

    See the module docstring for the spec and when it is applied. ``ftprop=None`` is the float model:

    >>> import lightning.pytorch as pl
    >>> from torch import nn
    >>> class Net(FTPropMixin, pl.LightningModule):
    ...     def __init__(self, ftprop=None):
    ...         super().__init__()
    ...         self.save_hyperparameters()
    ...         self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> Net().apply_ftprop(), Net(ftprop={"activation": "sign"}).apply_ftprop()
    ([], ['body.1'])
    >>> net = Net(ftprop={"activation": "step", "rule": "sste", "memory": "packed"})
    >>> (parts,) = net.configure_callbacks()
    >>> net.apply_ftprop(), [type(part).__name__ for part in parts.parts]
    (['body.1'], ['FTPropDiagnostics', 'TrainingStepMemory'])
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_class(cls, "FTPropMixin")
        own = cls.__dict__.get("configure_model")
        if own is not None and not getattr(own, "_ftprop_wrapped", False):
            wrapped = _convert_after(own)
            wrapped._ftprop_wrapped = True
            cls.configure_model = wrapped

    # --- the spec ----------------------------------------------------------------------------

    def _ftprop_options(self) -> Optional[Dict[str, Any]]:
        hparams = self.hparams
        if HPARAMS_KEY not in hparams:
            raise ValueError(
                f"{type(self).__name__} uses FTPropMixin but self.hparams has no {HPARAMS_KEY!r} entry; "
                f"give __init__ an argument `{HPARAMS_KEY}: Optional[dict] = None` and call "
                "self.save_hyperparameters() (ftprop=None trains the float model)"
            )
        options = hparams[HPARAMS_KEY]
        if options is not None and not isinstance(options, dict):
            options = dict(options)  # e.g. an OmegaConf/Namespace mapping
        return options

    @property
    def ftprop_spec(self) -> Optional[Dict[str, Any]]:
        """The validated swap spec from ``hparams["ftprop"]``, or None for the float model."""
        options = self._ftprop_options()
        return None if options is None else spec_from_dict(options, extra_keys=_LOG_KEYS)

    def apply_ftprop(self) -> List[str]:
        """Convert the module as ``hparams["ftprop"]`` says (idempotent); returns the swapped names."""
        spec = self.ftprop_spec
        return [] if spec is None else swap(self, spec)

    # --- Lightning hooks ---------------------------------------------------------------------

    @override
    def configure_model(self) -> None:
        super().configure_model()
        self.apply_ftprop()

    @override
    def configure_callbacks(self) -> list:
        callbacks = list(super().configure_callbacks() or [])
        options = self._ftprop_options()
        if options is not None:
            spec = self.ftprop_spec
            log = {k: options.get(k, LOG_DEFAULTS[k]) for k in _LOG_KEYS}
            callbacks.append(FTPropParts(spec, training_step_parts(spec, **log), integration="FTPropMixin"))
        return callbacks

    @override
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        entry = (checkpoint.get("callbacks") or {}).get(STATE_KEY)
        spec = self.ftprop_spec
        if spec is None:  # the float model: unless FTPropCallback trained it, nothing to convert
            if entry is not None:
                if entry.get("integration") == "FTPropMixin":
                    raise ValueError(
                        f"the checkpoint holds a threshold network ({entry['spec']}) but {type(self).__name__} "
                        f"has hparams['{HPARAMS_KEY}'] = None; load it with the checkpoint's spec, then call "
                        "lightning_ftprop.revert(model) if you want the float activations back"
                    )
                spec = spec_from_dict(entry["spec"])  # FTPropCallback trained it: convert as it did
                check_checkpoint_entry(entry, spec, swap(self, spec), type(self).__name__)
            return
        layers = self.apply_ftprop()  # before load_state_dict: threshold units have no weights to load
        if entry is not None:
            check_checkpoint_entry(entry, spec, layers, type(self).__name__)
