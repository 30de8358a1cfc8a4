"""The paper's experiments as data: its six methods and each network's hyper-parameters.

Friesen & Domingos (ICLR 2018), Table 1, compares six ways to train a network, on four networks. This
module is the one place they are written; the shipped configs (``scripts/generate_configs.py``), the demo,
``benchmarks/table1/`` and ``benchmarks/accuracy.py`` all read them from here.

A :class:`Method` is an activation and, for threshold units, the rule that trains it::

    relu             h = max(z, 0)                    float baseline, plain backprop
    saturated_relu   h = min(max(z, 0), 1)            float baseline, plain backprop
    sign/sste        h = sign(z),  surrogate 1{|z| <= 1}        (saturated straight-through estimator)
    sign/soft_hinge  h = sign(z),  surrogate tanh-based FTP-SH  (the package's default rule)
    qrelu/sste       h = 2-bit staircase of z, SSTE
    qrelu/soft_hinge h = 2-bit staircase of z, FTP-SH

A :class:`Recipe` is one network's training set-up from the reference code's README (paper digest sections
3.2-3.5): optimizer, learning rate, epochs, the epochs at whose start the lr is multiplied by 0.1, batch size,
weight decay by activation kind, and qReLU's number of thresholds.

>>> [m.name for m in METHODS]
['relu', 'saturated_relu', 'sign/sste', 'sign/soft_hinge', 'qrelu/sste', 'qrelu/soft_hinge']
>>> RECIPES["convnet4"].lr, RECIPES["convnet4"].weight_decay_for("sign")
(0.00025, 0.0005)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Method", "METHODS", "FLOAT_BASELINES", "THRESHOLD_METHODS", "Recipe", "RECIPES", "method"]


@dataclass(frozen=True)
class Method:
    """One of the paper's six methods: an activation and, for a threshold unit, its rule.

    >>> Method("sign", "soft_hinge").name, Method("sign", "soft_hinge").slug
    ('sign/soft_hinge', 'sign_soft_hinge')
    >>> Method("relu").is_baseline
    True
    """

    activation: str
    rule: Optional[str] = None
    title: str = ""

    @property
    def name(self) -> str:
        """``activation`` or ``activation/rule``: how reports and command lines name the method."""
        return self.activation if self.rule is None else f"{self.activation}/{self.rule}"

    @property
    def slug(self) -> str:
        """``name`` with ``_`` for ``/``: how file names (configs, logs) name the method."""
        return self.name.replace("/", "_")

    @property
    def is_baseline(self) -> bool:
        """A full-precision baseline: no threshold unit and no rule."""
        return self.rule is None


#: The paper's six methods in Table 1's order: two float baselines, then SSTE and FTP-SH for sign and qReLU.
METHODS: Tuple[Method, ...] = (
    Method("relu", None, "ReLU baseline (full precision)"),
    Method("saturated_relu", None, "saturated ReLU baseline, min(max(z, 0), 1) (full precision)"),
    Method("sign", "sste", "sign activation trained with SSTE (saturated straight-through estimator)"),
    Method("sign", "soft_hinge", "sign activation trained with FTP-SH (feasible target propagation, soft hinge)"),
    Method("qrelu", "sste", "quantized ReLU trained with SSTE"),
    Method("qrelu", "soft_hinge", "quantized ReLU trained with FTP-SH (soft hinge)"),
)
FLOAT_BASELINES: Tuple[Method, ...] = tuple(m for m in METHODS if m.is_baseline)
THRESHOLD_METHODS: Tuple[Method, ...] = tuple(m for m in METHODS if not m.is_baseline)


def method(name: str) -> Method:
    """The method called ``name`` (``"relu"``, ``"sign/soft_hinge"``, or the file-name form ``"sign_soft_hinge"``).

    >>> method("qrelu/sste")
    Method(activation='qrelu', rule='sste', title='quantized ReLU trained with SSTE')
    >>> method("tanh")
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'tanh'; the paper's methods are: relu, saturated_relu, sign/sste, sign/soft_hinge, qrelu/sste, qrelu/soft_hinge
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a str, got {type(name).__name__}")
    for m in METHODS:
        if name in (m.name, m.slug):
            return m
    raise ValueError(f"unknown method {name!r}; the paper's methods are: {', '.join(m.name for m in METHODS)}")


@dataclass(frozen=True)
class Recipe:
    """One network's hyper-parameters in the paper (reference README; digest sections 3.2-3.5).

    ``weight_decay`` is ``(full precision, sign, qrelu)``: the paper decays threshold networks' weights less
    on ImageNet. ``milestones`` are the epochs at whose start the learning rate is multiplied by ``gamma``.

    >>> recipe = RECIPES["resnet18"]
    >>> recipe.optimizer, recipe.lr, recipe.epochs, recipe.milestones, recipe.qrelu_thresholds
    ('sgd', 0.1, 90, (30, 60), 5)
    """

    dataset: str
    title: str
    optimizer: str
    lr: float
    epochs: int
    milestones: Tuple[int, ...]
    batch_size: int
    weight_decay: Tuple[float, float, float]
    qrelu_thresholds: int
    gamma: float = 0.1

    def weight_decay_for(self, activation: str) -> float:
        """The weight decay for a network with ``activation`` (float baselines use the first entry).

        >>> RECIPES["resnet18"].weight_decay_for("qrelu")
        1e-05
        """
        return self.weight_decay[{"sign": 1, "qrelu": 2}.get(activation, 0)]


#: The paper's networks and their recipes, by architecture name (:func:`lightning_ftprop.models.get_model`).
RECIPES: Dict[str, Recipe] = {
    "convnet4": Recipe("cifar10", "4-layer convnet, CIFAR-10", "adam", 2.5e-4, 300, (200, 250), 64, (5e-4,) * 3, 3),
    "convnet8": Recipe(
        "cifar10", "8-layer convnet (DoReFa SVHN net), CIFAR-10", "adam", 1e-3, 300, (200, 250), 64, (5e-4,) * 3, 3
    ),
    "alexnet_dorefa": Recipe(
        "imagenet", "AlexNet (DoReFa variant), ImageNet", "adam", 1e-4, 80, (56, 64), 128, (5e-4, 5e-6, 5e-5), 3
    ),
    "resnet18": Recipe("imagenet", "ResNet-18, ImageNet", "sgd", 0.1, 90, (30, 60), 256, (1e-4, 5e-7, 1e-5), 5),
}
