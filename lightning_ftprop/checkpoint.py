"""Rebuild a trained model from a Lightning checkpoint, threshold units in place, without a Trainer.

    model = load_checkpoint_model("best.ckpt")                 # eval mode, weights loaded (strict)
    model = load_checkpoint_model("best.ckpt", "mypkg.MyNet")  # when the checkpoint names no class

It covers the three ways this package trains a model: :class:`~lightning_ftprop.FTPropCallback`
(its spec is read from ``checkpoint["callbacks"]["ftprop"]``, where the mixin's composite saves it too),
:class:`~lightning_ftprop.FTPropMixin` (the model converts itself) and
:class:`~lightning_ftprop.ImageClassifier`. ``lightning-ftprop export`` uses it.

>>> import os, tempfile
>>> load_checkpoint_model(os.path.join(tempfile.gettempdir(), "no-such.ckpt"))  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: checkpoint '.../no-such.ckpt' does not exist or is not a file
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["load_checkpoint_model"]


def _import_class(path: str) -> type:
    import importlib

    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import model class {path!r} ({err}); give a dotted path like pkg.module.Class"
        ) from None


def load_checkpoint_model(ckpt_path: str, model_class: Optional[str] = None, allow_pickle: bool = False):
    """Rebuild the LightningModule a ``lightning_ftprop`` pipeline saved, threshold units in place, in eval mode.

    The class is the checkpoint's ``_class_path`` (LightningCLI subclass mode), else ``model_class``,
    else :class:`~lightning_ftprop.ImageClassifier`. It is built from the saved hyper-parameters; its
    ``configure_model`` runs (an :class:`~lightning_ftprop.FTPropMixin` converts there); an
    :class:`~lightning_ftprop.FTPropCallback`'s stored spec is applied; then the weights load (strict).
    The file is read with ``torch.load(weights_only=True)`` unless ``allow_pickle`` (arbitrary code
    can run while unpickling: only for checkpoints you trust).

    Raises:
        ValueError: a missing file, a file that is not a checkpoint, or a checkpoint without what is
            needed to rebuild the model; the message says which.

    Typical use, on a checkpoint that ``lightning-ftprop fit`` or a Trainer wrote::

        model = load_checkpoint_model("lightning_logs/version_0/checkpoints/last.ckpt")
        logits = model(images)

    >>> load_checkpoint_model("no/such/last.ckpt")
    Traceback (most recent call last):
    ...
    ValueError: checkpoint 'no/such/last.ckpt' does not exist or is not a file
    """
    import torch

    from lightning_ftprop.parts import STATE_KEY
    from lightning_ftprop.spec import apply_spec, spec_from_dict

    if not os.path.isfile(ckpt_path):
        raise ValueError(f"checkpoint {ckpt_path!r} does not exist or is not a file")
    import pickle
    import zipfile

    if not zipfile.is_zipfile(ckpt_path):
        raise ValueError(
            f"checkpoint {ckpt_path!r} is not a readable PyTorch checkpoint (not a torch.save zip archive)"
        )
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if allow_pickle or "Weights only load failed" not in str(err):
            raise ValueError(f"checkpoint {ckpt_path!r} is not a readable PyTorch checkpoint ({err})") from err
        raise ValueError(
            f"checkpoint {ckpt_path!r} holds objects that torch.load(weights_only=True) refuses; if you trust "
            f"the file, pass allow_pickle=True (--allow_pickle on the command line) ({str(err).strip().splitlines()[-1]})"
        ) from err
    except Exception as err:
        raise ValueError(f"checkpoint {ckpt_path!r} is not a readable PyTorch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {ckpt_path!r} is not a Lightning checkpoint (it has no 'state_dict')")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None) or model_class or "lightning_ftprop.module.ImageClassifier"
    cls = _import_class(class_path)
    try:
        model = cls(**hparams)
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild {cls.__name__} from the checkpoint's hyper-parameters {sorted(hparams)} ({err}); "
            "the model must call self.save_hyperparameters(), or pass model_class (--model_class)"
        ) from err
    model.configure_model()
    state = (ckpt.get("callbacks") or {}).get(STATE_KEY)  # FTPropCallback (any subclass) and the mixin
    if isinstance(state, dict) and "spec" in state:
        apply_spec(model, spec_from_dict(state["spec"]))
    model.on_load_checkpoint(ckpt)  # as Lightning does; the mixin checks its stored spec and converts
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()
