"""``ImageClassifier``: one of the paper's networks plus its optimiser and schedule, as a LightningModule.

    model = ImageClassifier("convnet4", activation="sign", rule="soft_hinge", optimizer="adam",
                            lr=2.5e-4, weight_decay=5e-4, milestones=[200, 250])

Training follows the reference code (digest section 3.1):

* loss: softmax cross-entropy on the logits;
* optimiser: Adam (default betas) or SGD with momentum; ``weight_decay`` is the coupled L2 penalty of
  ``torch.optim`` (added to the gradient) and applies to *every* parameter, BN and biases included;
* schedule: the learning rate is multiplied by ``gamma`` at the *start* of every epoch listed in
  ``milestones``, counting epochs from 1 as the reference code's ``--lr-decay-epochs`` does
  (``milestones=[200, 250]`` trains epochs 1-199 at ``lr``). Internally this is ``MultiStepLR`` with
  ``milestones - 1``, stepped once per epoch.

Logged: ``train/loss``, ``train/acc`` (per epoch), ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_ftprop.models import MODELS, get_model

__all__ = ["ImageClassifier"]


class ImageClassifier(LightningModule):
    """A network from :data:`lightning_ftprop.models.MODELS` trained with cross-entropy.

    Args:
        arch: network name: ``convnet4``, ``convnet8``, ``alexnet_dorefa`` or ``resnet18``.
        activation: ``relu``, ``saturated_relu``, ``sign``, ``step`` or ``qrelu``.
        rule: the threshold units' rule (``soft_hinge`` = FTP-SH, ``sste`` = SSTE, ...); ignored by
            the ``relu`` and ``saturated_relu`` baselines.
        num_classes: number of classes.
        in_channels: image channels (1 for Fashion-MNIST, 3 otherwise).
        steps: ``qrelu`` thresholds (3: the paper's 2-bit qReLU; 5: its ResNet-18 runs).
        mode: ``qrelu`` backward, ``single`` (the paper's code) or ``per_threshold``.
        optimizer: ``adam`` or ``sgd`` (momentum ``momentum``).
        lr: initial learning rate.
        weight_decay: coupled L2 weight decay on all parameters.
        momentum: SGD momentum (Adam ignores it, as in the reference code).
        milestones: 1-based epochs at whose start the learning rate is multiplied by ``gamma``.
        gamma: the learning-rate decay factor.
    """

    def __init__(
        self,
        arch: str = "convnet4",
        activation: str = "sign",
        rule: str = "soft_hinge",
        num_classes: int = 10,
        in_channels: int = 3,
        steps: int = 3,
        mode: str = "single",
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 2.5e-4,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        milestones: Optional[List[int]] = None,
        gamma: float = 0.1,
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
        self.save_hyperparameters()
        unit_kwargs: Dict[str, Any] = {"steps": steps, "mode": mode} if activation == "qrelu" else {}
        self.net = get_model(
            arch, activation=activation, rule=rule, num_classes=num_classes, in_channels=in_channels, **unit_kwargs
        )
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

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
