"""``ImageClassifier``: one of the paper's networks plus its optimiser and schedule, as a LightningModule::

    model = ImageClassifier("convnet4", activation="sign", rule="soft_hinge", optimizer="adam",
                            lr=2.5e-4, weight_decay=5e-4, milestones=[200, 250])
    model = ImageClassifier("convnet4", ftprop={"activation": "qrelu", "rule": "sste", "unit_kwargs": {"thresholds": 5}})

The network is built as a float network (:mod:`lightning_ftprop.models`) and, being an
:class:`~lightning_ftprop.FTPropMixin`, the module swaps in threshold units from ``hparams["ftprop"]``:
the spec with the keys of :class:`~lightning_ftprop.FTPropCallback` (``activation``, ``rule``,
``weighted``, ``include``, ``exclude``, ``mapping``, ``unit_kwargs``, ``log_every_n_steps``,
``histogram_every_n_steps``). ``activation``, ``rule``, ``thresholds`` and ``mode`` are shorthands that
fill that dict (``thresholds``/``mode`` go to ``unit_kwargs``). So every threshold run logs the per-layer
``ftprop/<layer>/*`` diagnostics, stores the spec in its checkpoints and reloads with
``ImageClassifier.load_from_checkpoint(path)`` as threshold units.

Training follows the reference code (digest section 3.1):

* loss: softmax cross-entropy on the logits;
* optimiser: Adam (default betas) or SGD with momentum; ``weight_decay`` is the coupled L2 penalty of
  ``torch.optim`` (added to the gradient) and applies to *every* parameter, BN and biases included;
* schedule: the learning rate is multiplied by ``gamma`` at the *start* of every epoch listed in
  ``milestones``, counting epochs from 1 as the reference code's ``--lr-decay-epochs`` does
  (``milestones=[200, 250]`` trains epochs 1-199 at ``lr``). Internally this is ``MultiStepLR`` with
  ``milestones - 1``, stepped once per epoch.

Logged: ``train/loss``, ``train/acc`` (per epoch), ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``,
and for threshold networks ``ftprop/<layer>/{mismatch,ignored,saturated,loss}``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ftprop.mixin import FTPropMixin
from lightning_ftprop.models import FLOAT_ACTIVATION_NAMES, MODELS, get_model
from lightning_ftprop.models.activation import check_network_activation
from lightning_ftprop.rules import DEFAULT_RULE

__all__ = ["ImageClassifier", "resolve_ftprop"]


def resolve_ftprop(
    activation: Optional[str] = None,
    rule: Optional[str] = None,
    thresholds: Optional[int] = None,
    mode: Optional[str] = None,
    ftprop: Optional[Mapping[str, Any]] = None,
) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(network activation, hparams["ftprop"])`` from the shorthands and the ``ftprop`` dict.

    The shorthands fill the dict's ``activation``, ``rule`` and ``unit_kwargs["thresholds"/"mode"]``; a
    shorthand that disagrees with the dict is an error. With neither, the network uses ``sign`` units
    and :data:`~lightning_ftprop.rules.DEFAULT_RULE`. ``relu`` and ``saturated_relu`` are the float
    baselines: their ``ftprop`` is None and ``rule`` is ignored.

    Raises:
        ValueError: an unknown activation, a shorthand that disagrees with ``ftprop``, or unit
            arguments or an ``ftprop`` dict given to a float baseline.
        TypeError: ``ftprop`` is not a dict.

    Example:
        >>> resolve_ftprop("qrelu", "sste", thresholds=5)
        ('qrelu', {'activation': 'qrelu', 'rule': 'sste', 'unit_kwargs': {'thresholds': 5}})
        >>> resolve_ftprop("relu")  # a float baseline has no spec
        ('relu', None)
    """
    if ftprop is not None and not isinstance(ftprop, Mapping):
        raise TypeError(f"ftprop must be a dict with the keys of FTPropCallback or None, got {ftprop!r}")
    if activation is not None and check_network_activation(activation) in FLOAT_ACTIVATION_NAMES:
        given = {k: v for k, v in (("thresholds", thresholds), ("mode", mode), ("ftprop", ftprop)) if v is not None}
        if given:
            raise ValueError(
                f"activation={activation!r} is a float baseline without threshold units, but "
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())} configure threshold units; drop them "
                "or choose a threshold activation"
            )
        return activation, None
    options = dict(ftprop or {})
    unit_kwargs = dict(options.get("unit_kwargs") or {})
    for key, value, target in (
        ("activation", activation, options),
        ("rule", rule, options),
        ("thresholds", thresholds, unit_kwargs),
        ("mode", mode, unit_kwargs),
    ):
        if value is None:
            continue
        if key in target and target[key] != value:
            raise ValueError(
                f"{key}={value!r} disagrees with ftprop's {key}={target[key]!r}; give the setting once, "
                "as an argument or in the ftprop dict"
            )
        target[key] = value
    if unit_kwargs:
        options["unit_kwargs"] = unit_kwargs
    options.setdefault("activation", "sign")
    options.setdefault("rule", DEFAULT_RULE)
    if options["activation"] in FLOAT_ACTIVATION_NAMES:
        raise ValueError(
            f"ftprop's activation must be a threshold unit, got {options['activation']!r}; for the float "
            "baseline pass activation='relu' or 'saturated_relu' without ftprop"
        )
    return options["activation"], options


class ImageClassifier(FTPropMixin, LightningModule):
    """A network from :data:`lightning_ftprop.models.MODELS` trained with cross-entropy.

    Args:
        arch: network name: ``convnet4``, ``convnet8``, ``alexnet_dorefa`` or ``resnet18``.
        activation: ``relu``, ``saturated_relu`` (the float baselines), or the threshold unit
            ``sign``, ``step`` or ``qrelu`` (shorthand for ``ftprop["activation"]``; default ``sign``).
        rule: shorthand for ``ftprop["rule"]`` (``soft_hinge`` = FTP-SH, ``sste`` = SSTE, ...;
            default ``soft_hinge``); ignored by the float baselines.
        num_classes: number of classes.
        in_channels: image channels (1 for Fashion-MNIST, 3 otherwise).
        thresholds: shorthand for ``ftprop["unit_kwargs"]["thresholds"]``: ``qrelu``'s number of
            thresholds (3, the default: the paper's 2-bit qReLU; 5: its ResNet-18 runs).
        mode: shorthand for ``ftprop["unit_kwargs"]["mode"]``: ``qrelu`` backward, ``single`` (the
            default, the paper's code) or ``per_threshold``.
        optimizer: ``adam`` or ``sgd`` (momentum ``momentum``).
        lr: initial learning rate.
        weight_decay: coupled L2 weight decay on all parameters.
        momentum: SGD momentum (Adam ignores it, as in the reference code).
        milestones: 1-based epochs at whose start the learning rate is multiplied by ``gamma``.
        gamma: the learning-rate decay factor.
        ftprop: the threshold units' spec, a dict with the keys of :class:`~lightning_ftprop.FTPropCallback`
            (see :class:`~lightning_ftprop.FTPropMixin`); the shorthands above fill it.

    ``hparams`` records the resolved ``activation`` and ``ftprop`` (None for a float baseline), not the
    shorthands ``rule``, ``thresholds`` and ``mode``.

    Example:
        >>> import torch
        >>> model = ImageClassifier("convnet4", activation="sign", rule="sste", in_channels=1)
        >>> model.hparams.ftprop  # the spec FTPropMixin converts from, and checkpoints keep
        {'activation': 'sign', 'rule': 'sste'}
        >>> model.configure_model()  # Lightning calls this; the ReLUs become Sign units
        >>> from lightning_ftprop import threshold_units
        >>> [unit.activation for _, unit in threshold_units(model)]
        ['sign', 'sign', 'sign']
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        arch: str = "convnet4",
        activation: Optional[str] = None,
        rule: Optional[str] = None,
        num_classes: int = 10,
        in_channels: int = 3,
        thresholds: Optional[int] = None,
        mode: Optional[str] = None,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 2.5e-4,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        milestones: Optional[List[int]] = None,
        gamma: float = 0.1,
        ftprop: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if arch not in MODELS:
            raise ValueError(f"unknown arch {arch!r}; valid architectures are: {', '.join(MODELS)}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {optimizer!r}; valid optimizers are: adam, sgd")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        milestones = list(milestones or [])
        if any(not isinstance(m, int) or m < 2 for m in milestones) or milestones != sorted(set(milestones)):
            raise ValueError(
                f"milestones must be strictly increasing 1-based epochs >= 2 (the first epoch is 1), got {milestones!r}"
            )
        activation, ftprop = resolve_ftprop(activation, rule, thresholds, mode, ftprop)
        self.save_hyperparameters(ignore=["rule", "thresholds", "mode"])  # the shorthands live on in ftprop
        self.save_hyperparameters({**self.hparams, "activation": activation, "ftprop": ftprop})  # the resolved values
        network_activation = activation if ftprop is None else "relu"
        self.net = get_model(arch, activation=network_activation, num_classes=num_classes, in_channels=in_channels)
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.apply_ftprop()  # threshold units from the start (the mixin re-applies it, idempotently, in fit)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        metric(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Dict[str, Any]:
        hp = self.hparams
        if hp.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if not hp.milestones:
            return {"optimizer": opt}
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, [m - 1 for m in hp.milestones], gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
