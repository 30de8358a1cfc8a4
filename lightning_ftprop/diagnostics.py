"""Per-layer target statistics of FTPROP-MB, gathered in the backward pass.

In the backward pass a threshold unit with pre-activation ``z`` receives ``g = dL/dh`` and sets its
target ``t = sign(-g)`` (see :mod:`lightning_ftprop.functional`). The statistics count in the
coordinates in which the unit's backward applies its rule (:func:`rule_coordinates`, the very
coordinates of :func:`lightning_ftprop.functional.unit_coordinates`): ``u = z`` for sign and step;
for qrelu ``u = 2z - 1`` in ``"single"`` mode, and in ``"per_threshold"`` mode one coordinate per
threshold, ``u_k = z - theta_k``, so each element counts ``thresholds`` times (once per threshold). Let
``s = +1 if u > 0 else -1`` be the side of the threshold the unit is on. Over the ``N`` coordinates
of one optimizer step of a layer (elements times coordinates per element; all micro-batches, all
calls of a shared unit, all DDP ranks)::

    mismatch  = #{t != 0 and t != s} / N          the target asks the unit to flip
    ignored   = #{t == 0} / N                     g == 0: the unit gets no target
    saturated = #{t != 0 and dL/du(u, t) == 0} / #{t != 0}      (0.0 if every unit is ignored)
    loss      = sum |g| * L(u, t) / N             the mean weighted layer loss

``saturated`` counts units that have a target but whose rule gives them exactly zero gradient:
for ``sste`` that is ``|u| > 1``, for ``hinge`` a target already met with margin (``t*u >= 1``); for
``soft_hinge`` and ``log_loss`` only where the derivative underflows (in float32, ``|u|`` above about 44
and 89);
``ste`` never saturates. The statistics are computed in float32 from the unit's own ``z`` and ``g``;
they never change the backward pass. ``loss`` is in the units of ``g``: under float16 AMP it
includes the GradScaler's scale factor (the other three only use the sign of ``g``).

:class:`FTPropDiagnostics` is the Lightning callback that gathers them: a forward hook on every
threshold unit registers a tensor hook on the unit's output, which sees ``g``. It does so only on
steps that log (every ``log_every_n_steps`` optimizer steps), so other steps pay nothing and never
synchronise host and device. Counts live in :class:`TargetCounts`, a torchmetrics ``Metric`` whose
states are summed across DDP ranks. Values are logged to every logger as ``ftprop/<layer>/<stat>``
(layer names with every character outside ``[_a-zA-Z0-9]`` replaced by ``_``) and kept in
:attr:`FTPropDiagnostics.latest`. With a ``WandbLogger``, rank zero also logs ``ftprop/<layer>/preact``
histograms of the pre-activations every ``histogram_every_n_steps`` steps.

:class:`~lightning_ftprop.FTPropCallback` and :class:`~lightning_ftprop.FTPropMixin` each hold one as
their ``diagnostics`` part (see :mod:`lightning_ftprop.parts`); add ``FTPropDiagnostics`` yourself only
for models converted some other way. Its ``logged_steps`` and ``last_logged_step`` are saved in
checkpoints (``state_key`` ``"FTPropDiagnostics"``, the same for subclasses: inside
``checkpoint["callbacks"]["ftprop"]`` when it is a part) and continue after a resume.

>>> diagnostics = FTPropDiagnostics(log_every_n_steps=10, histogram_every_n_steps=0)
>>> diagnostics.state_dict()
{'logged_steps': 0, 'last_logged_step': None, 'latest': {}}
>>> u, g = torch.tensor([0.5, -2.0, 0.1]), torch.tensor([0.3, -1.0, 0.0])
>>> from lightning_ftprop.rules import get_rule
>>> counts, loss = target_counts(u, g, get_rule("sste"))
>>> counts.tolist()  # N; ignored (g = 0); mismatch (t = -s for u = 0.5 and -2.0); saturated (|u| > 1)
[3, 1, 2, 1]
>>> stats_from_counts(counts.tolist(), float(loss))["ignored"]
0.3333333333333333
"""

from __future__ import annotations

import functools
import re
from typing import Any, Dict, List, Optional, Tuple

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from lightning_ftprop._namespace import check_trainer
from lightning_ftprop.convert import threshold_units
from lightning_ftprop.functional import unit_coordinates
from lightning_ftprop.memory import recomputing
from lightning_ftprop.nn import ThresholdUnit
from lightning_ftprop.rules import Rule

__all__ = [
    "LOG_DEFAULTS",
    "STATS",
    "FTPropDiagnostics",
    "TargetCounts",
    "layer_key",
    "rule_coordinates",
    "stats_from_counts",
    "target_counts",
]

#: The statistics logged per layer, in order.
STATS = ("mismatch", "ignored", "saturated", "loss")

#: The logging options and their defaults, shared by FTPropDiagnostics, FTPropCallback and FTPropMixin.
LOG_DEFAULTS = {"log_every_n_steps": 50, "histogram_every_n_steps": 500}

_HISTOGRAM_SAMPLES = 1 << 16  # at most this many pre-activations per unit call go into a histogram


def rule_coordinates(unit: ThresholdUnit, z: Tensor) -> List[Tensor]:
    """The coordinates ``u`` in which ``unit``'s backward applies its rule to a pre-activation ``z``.

    Read from the unit's kind (:meth:`~lightning_ftprop.kinds.UnitKind.affine_maps`): one tensor for sign,
    step and qrelu ``"single"``; one per threshold for qrelu ``"per_threshold"``.
    The sides (``u > 0``) and the rule's masks are exact, as in the backward.

    >>> from lightning_ftprop.nn import QReLU
    >>> [u.tolist() for u in rule_coordinates(QReLU(thresholds=3, mode="per_threshold"), torch.tensor([0.75]))]
    [[0.75], [0.25], [-0.25]]
    >>> [u.tolist() for u in rule_coordinates(QReLU(thresholds=3), torch.tensor([0.75]))]
    [[0.5]]
    """
    edges = (*unit.rule.edges, 0.0)  # 0: the side s is exact too
    return [u for u, _ in unit_coordinates(z, unit.kind, unit.mode, edges)]


def target_counts(u: Tensor, g: Tensor, rule: Rule) -> Tuple[Tensor, Tensor]:
    """Count one call of a unit: ``(counts, loss_sum)`` on ``g``'s device, without synchronising.

    ``counts`` is int64 ``[N, #ignored, #mismatch, #saturated]`` and ``loss_sum`` the float32 scalar
    ``sum |g| * L(u, t)``, with ``t = sign(-g)`` and the definitions of the module docstring.

    >>> from lightning_ftprop.rules import get_rule
    >>> u = torch.tensor([0.5, -0.5, 2.0, 0.3])
    >>> g = torch.tensor([-1.0, -1.0, 0.5, 0.0])  # targets t = +1, +1, -1 and none (g = 0)
    >>> counts, loss = target_counts(u, g, get_rule("sste"))
    >>> counts.tolist(), float(loss)  # mismatch: u = -0.5 and 2.0; saturated: |u| > 1
    ([4, 1, 2, 1], 3.0)
    """
    u, g = u.detach().float(), g.detach().float()
    t = -torch.sign(g)
    active = t != 0
    side = torch.where(u > 0, 1.0, -1.0)
    counts = torch.stack(
        [
            torch.full((), g.numel(), dtype=torch.long, device=g.device),
            (~active).sum(),
            (active & (t != side)).sum(),
            (active & (rule.grad(u, t) == 0)).sum(),
        ]
    )
    loss = torch.where(active, g.abs() * rule.loss(u, t), 0.0).sum()
    return counts, loss


def stats_from_counts(counts: List[int], loss: float) -> Dict[str, float]:
    """The statistics of :data:`STATS` from one layer's summed ``counts`` and ``loss``.

    >>> stats_from_counts([10, 2, 3, 4], loss=5.0)
    {'mismatch': 0.3, 'ignored': 0.2, 'saturated': 0.5, 'loss': 0.5}
    """
    total, ignored, mismatch, saturated = counts
    active = total - ignored
    return {
        "mismatch": mismatch / total,
        "ignored": ignored / total,
        "saturated": saturated / active if active else 0.0,
        "loss": loss / total,
    }


def layer_key(name: str) -> str:
    """A module name as a W&B-safe key segment: ``"layer1.0.act"`` -> ``"layer1_0_act"``.

    >>> layer_key("layer1.0.act")
    'layer1_0_act'
    """
    return re.sub(r"[^_a-zA-Z0-9]", "_", name) or "root"


class TargetCounts(Metric):
    """Per-layer target counts, summed across DDP ranks when computed.

    States: ``counts`` (int64, ``[layers, 4]``: N, ignored, mismatch, saturated) and ``loss``
    (float32, ``[layers]``), both with ``dist_reduce_fx="sum"``.

    >>> metric = TargetCounts(num_layers=2)
    >>> metric.update(1, torch.tensor([4, 1, 2, 0]), torch.tensor(0.5))
    >>> metric.counts.tolist()
    [[0, 0, 0, 0], [4, 1, 2, 0]]
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_layers: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", torch.zeros(num_layers, 4, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("loss", torch.zeros(num_layers), dist_reduce_fx="sum")

    def update(self, layer: int, counts: Tensor, loss: Tensor) -> None:
        self.counts[layer] += counts
        self.loss[layer] += loss

    def compute(self) -> Tuple[Tensor, Tensor]:
        return self.counts, self.loss


class FTPropDiagnostics(Callback):
    """Log per-layer FTPROP target statistics of a model's threshold units (see the module docstring).

    Args:
        log_every_n_steps: gather and log every this many optimizer steps (at global steps 0, n,
            2n, ...); 0 turns the statistics off.
        histogram_every_n_steps: with a ``WandbLogger``, log pre-activation histograms every this
            many steps, on rank zero; 0 turns them off.

    For a model converted without :class:`~lightning_ftprop.FTPropCallback`, pass it to the
    Trainer (``Trainer(callbacks=[FTPropDiagnostics(log_every_n_steps=10)])``):

    >>> diagnostics = FTPropDiagnostics(log_every_n_steps=10)
    >>> diagnostics.log_every_n_steps, diagnostics.state_key
    (10, 'FTPropDiagnostics')
    """

    def __init__(
        self,
        log_every_n_steps: int = LOG_DEFAULTS["log_every_n_steps"],
        histogram_every_n_steps: int = LOG_DEFAULTS["histogram_every_n_steps"],
    ) -> None:
        for name, value in (
            ("log_every_n_steps", log_every_n_steps),
            ("histogram_every_n_steps", histogram_every_n_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (0 turns it off), got {value!r}")
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        #: The statistics of the last logged step: ``{"ftprop/<layer>/<stat>": value}``.
        self.latest: Dict[str, float] = {}
        self._names: List[str] = []
        self._keys: List[str] = []
        self._handles: list = []
        #: The per-layer counts of the step being gathered (created in ``on_fit_start``).
        self.metric: Optional[TargetCounts] = None
        self._preacts: Dict[int, List[Tensor]] = {}
        self._gather_stats = False
        self._gather_histograms = False
        self._step = 0
        #: How many optimizer steps have had their statistics logged; saved in checkpoints, so a
        #: resumed run continues counting where it stopped.
        self.logged_steps = 0
        #: The global step of the last logged statistics (None before the first); saved in checkpoints.
        self.last_logged_step: Optional[int] = None

    @property
    @override
    def state_key(self) -> str:
        """``"FTPropDiagnostics"`` for this class and every subclass, so a subclass resumes its state."""
        return "FTPropDiagnostics"

    @override
    def state_dict(self) -> Dict[str, Any]:
        """``{"logged_steps", "last_logged_step", "latest"}``: what a resumed run continues from."""
        return {
            "logged_steps": self.logged_steps,
            "last_logged_step": self.last_logged_step,
            "latest": dict(self.latest),
        }

    @override
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict`."""
        self.logged_steps = int(state_dict.get("logged_steps", 0))
        self.last_logged_step = state_dict.get("last_logged_step")
        self.latest = dict(state_dict.get("latest", {}))

    # --- hooks on the model ------------------------------------------------------------------

    def _forward_hook(self, index: int, unit: ThresholdUnit, inputs: Tuple[Any, ...], output: Tensor) -> None:
        if not (self._gather_stats or self._gather_histograms) or not unit.training or recomputing():
            return  # a recomputation (memory="recompute") repeats a call that was already seen
        z = inputs[0].detach()
        if self._gather_histograms:
            stride = max(1, z.numel() // _HISTOGRAM_SAMPLES)
            self._preacts.setdefault(index, []).append(z.flatten()[::stride].float())
        if self._gather_stats and isinstance(output, Tensor) and output.requires_grad:
            coordinates = rule_coordinates(unit, z)
            output.register_hook(functools.partial(self._grad_hook, index, coordinates, unit.rule))

    def _grad_hook(self, index: int, coordinates: List[Tensor], rule: Rule, g: Tensor) -> None:
        with torch.no_grad():
            for u in coordinates:
                counts, loss = target_counts(u, g, rule)
                self.metric.update(index, counts, loss)

    def _attach(self, pl_module: LightningModule) -> None:
        self._detach()
        units = threshold_units(pl_module)
        if not units:
            raise ValueError(
                f"{type(self).__name__}: {type(pl_module).__name__} has no threshold units; convert it with "
                "FTPropCallback, FTPropMixin or lightning_ftprop.convert first"
            )
        self._names = [name for name, _ in units]
        self._keys = []
        for name in self._names:
            key, n = layer_key(name), 2
            while key in self._keys:
                key, n = f"{layer_key(name)}_{n}", n + 1
            self._keys.append(key)
        self._handles = [
            unit.register_forward_hook(functools.partial(self._forward_hook, i)) for i, (_, unit) in enumerate(units)
        ]
        device = next((t.device for t in [*pl_module.parameters(), *pl_module.buffers()]), torch.device("cpu"))
        self.metric = TargetCounts(len(units)).to(device)

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._preacts = {}
        self._gather_stats = self._gather_histograms = False

    @staticmethod
    def _wandb_loggers(trainer: Trainer) -> list:
        from lightning.pytorch.loggers import WandbLogger

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    # --- Lightning hooks ---------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_trainer(trainer, pl_module, type(self).__name__)
        # one integration per Trainer: lightning_ftprop.parts.check_one_integration, run by FTPropParts

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.log_every_n_steps or self.histogram_every_n_steps:
            self._attach(pl_module)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._handles:
            return
        step = self._begin_stats(trainer.global_step)
        self._gather_histograms = (
            bool(self.histogram_every_n_steps)
            and step % self.histogram_every_n_steps == 0
            and trainer.is_global_zero
            and bool(self._wandb_loggers(trainer))
        )

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step:
            return  # gradient accumulation: the optimizer has not stepped yet, keep gathering
        if self._gather_stats:
            self._log_stats(trainer)
        if self._gather_histograms:
            self._log_histograms(trainer)
        self._gather_stats = self._gather_histograms = False

    def _log_stats(self, trainer: Trainer) -> None:
        metrics = self._compute_stats()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self._step)

    def _begin_stats(self, step: int) -> int:
        """Start global step ``step``: its statistics are gathered when it is a logging step (0, n, 2n, ...)."""
        self._step = step
        self._gather_stats = bool(self.log_every_n_steps) and step % self.log_every_n_steps == 0
        return step

    def _compute_stats(self) -> Dict[str, float]:
        """The gathered step's ``{"ftprop/<layer>/<stat>": value}``, summed over ranks; counters reset."""
        counts, loss = self.metric.compute()  # sums over ranks: every rank calls this on the same step
        # compute() squeezes one-element results: restore the per-layer shapes
        counts, loss = counts.reshape(-1, 4).tolist(), loss.reshape(-1).tolist()
        self.metric.reset()
        metrics: Dict[str, float] = {}
        for key, layer_counts, layer_loss in zip(self._keys, counts, loss):
            if layer_counts[0] == 0:
                continue  # the layer was not called in this step
            for stat, value in stats_from_counts(layer_counts, layer_loss).items():
                metrics[f"ftprop/{key}/{stat}"] = value
        self.latest = metrics
        self.logged_steps += 1
        self.last_logged_step = self._step
        return metrics

    def _log_histograms(self, trainer: Trainer) -> None:
        import wandb

        histograms = {
            f"ftprop/{self._keys[i]}/preact": wandb.Histogram(torch.cat(chunks).cpu().numpy())
            for i, chunks in sorted(self._preacts.items())
        }
        self._preacts = {}
        for logger in self._wandb_loggers(trainer):
            logger.log_metrics(histograms, step=self._step)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._detach()
