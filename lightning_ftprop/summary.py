"""A table of a model's threshold layers, in the spirit of ``larq.models.summary``.

>>> import torch
>>> from torch import nn
>>> import lightning_ftprop as ftp
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
...                       nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 2))
>>> ftp.convert(model, "sign")  # doctest: +ELLIPSIS
[...]
>>> print(summary(model, torch.randn(2, 3, 8, 8)))  # doctest: +NORMALIZE_WHITESPACE
name  activation  levels (bits)  rule        elements/sample  inference bits/sample (as float32)  training keeps (packed)
2     sign        2 (1)          soft_hinge  288              288 (9,216)                         nothing
5     sign        2 (1)          soft_hinge  16               16 (512)                            z (float32)
total: 2 threshold layers, 304 elements/sample = 0.0 KB at their bit widths (1.2 KB as float32)
float state in training (memory='packed'): 1 unit: 5 (z comes from a matmul (AddmmBackward0); memory='recompute' rebuilds it)

The last column is what each unit keeps for its backward under :func:`lightning_ftprop.memory.packed`
(the default memory mode), found by one training-mode forward whose effects are undone: ``nothing``
(``z`` is rebuilt from what autograd keeps anyway, or the rule needs no ``z``), ``1-bit mask``, or a
float ``z``, with the reason listed below the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from lightning_ftprop.convert import float_activations, threshold_units

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass
class LayerSummary:
    """One threshold layer in a :class:`ModelSummary`: its name, unit, rule and activation size.

    ``levels`` is the number of output values of the unit (sign: 2) and ``bits`` the bits one output
    needs (``ceil(log2(levels))``); ``elements`` counts the unit's outputs per sample.

    Example:
        >>> layer = LayerSummary("act1", "qrelu", levels=4, bits=2, rule="sste", elements=1000)
        >>> layer.inference_bits, layer.float32_bits
        (2000, 32000)
    """

    name: str
    activation: str
    levels: int
    bits: int
    rule: str
    elements: int  # activation elements per sample
    #: What the unit keeps for its backward under ``memory="packed"`` (``"nothing"``, ``"1-bit mask"``,
    #: ``"z (float32)"``, ...), and why; empty when no gradient reached the unit.
    kept: str = ""
    kept_why: str = ""

    @property
    def keeps_float(self) -> bool:
        """Whether the unit keeps a float tensor (its ``z``) for its backward under ``memory="packed"``."""
        return self.kept.startswith("z ")

    @property
    def inference_bits(self) -> int:
        """Bits of this layer's activations for one sample at inference, at the unit's bit width."""
        return self.elements * self.bits

    @property
    def float32_bits(self) -> int:
        """The same activations stored as float32."""
        return self.elements * 32


@dataclass
class ModelSummary:
    """What :func:`summary` returns: the threshold layers in call order; ``str()`` is the table.

    Example:
        >>> layers = [LayerSummary("act1", "sign", 2, 1, "sste", 4096), LayerSummary("act2", "sign", 2, 1, "sste", 512)]
        >>> result = ModelSummary(layers)
        >>> result.total_elements, result.total_bits // 8  # bytes per sample at one bit each
        (4608, 576)
    """

    layers: List[LayerSummary]
    #: ``(name, class path or function)`` of every activation still in float (excluded or unmatched).
    left_in_float: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def total_elements(self) -> int:
        """Threshold activations per sample, over all layers."""
        return sum(layer.elements for layer in self.layers)

    @property
    def total_bits(self) -> int:
        """Bits per sample to store every threshold activation at its own bit width."""
        return sum(layer.elements * layer.bits for layer in self.layers)

    def __str__(self) -> str:
        header = (
            "name",
            "activation",
            "levels (bits)",
            "rule",
            "elements/sample",
            "inference bits/sample (as float32)",
            "training keeps (packed)",
        )
        rows = [header] + [
            (
                layer.name,
                layer.activation,
                f"{layer.levels} ({layer.bits})",
                layer.rule,
                f"{layer.elements:,}",
                f"{layer.inference_bits:,} ({layer.float32_bits:,})",
                layer.kept or "-",
            )
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(
            f"total: {len(self.layers)} threshold layers, {self.total_elements:,} elements/sample = "
            f"{_kb(self.total_bits / 8)} at their bit widths ({_kb(self.total_elements * 4)} as float32)"
        )
        floats = [layer for layer in self.layers if layer.keeps_float]
        if floats:
            reasons = ", ".join(f"{layer.name} ({layer.kept_why})" for layer in floats)
            n = len(floats)
            lines.append(f"float state in training (memory='packed'): {n} unit{'s' if n > 1 else ''}: {reasons}")
        if self.left_in_float:
            n = len(self.left_in_float)
            names = ", ".join(f"{name} ({what})" for name, what in self.left_in_float)
            lines.append(f"left in float: {n} activation{'s' if n > 1 else ''}: {names}")
        return "\n".join(lines)


def _kb(nbytes: float) -> str:
    return f"{nbytes / 1024:.1f} KB"


def summary(model: nn.Module, example_input: Any) -> ModelSummary:
    """Run ``model(example_input)`` once (no grad, eval mode) and describe every threshold layer.

    A unit called several times (a shared ``relu``) counts the elements of every call. Activations
    still in float (excluded, or matched by nothing) are listed in ``left_in_float``.
    ``example_input`` may be a tensor or a tuple of positional arguments; dim 0 is the batch.

    Raises:
        ValueError: ``model`` has no threshold units (convert it first).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_ftprop import convert
        >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> names = convert(net, "qrelu", thresholds=3)
        >>> layer = summary(net, torch.zeros(5, 8)).layers[0]
        >>> layer.name, layer.activation, layer.levels, layer.bits, layer.elements
        ('1', 'qrelu', 4, 2, 32)
    """
    units = threshold_units(model)
    if not units:
        raise ValueError(f"{type(model).__name__} has no threshold units; call lightning_ftprop.convert(model) first")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    batch = args[0].shape[0] if isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else 1
    counts = {name: 0 for name, _ in units}
    handles = []
    for name, unit in units:

        def hook(module, inputs, output, name=name):
            counts[name] += output.numel() // batch

        handles.append(unit.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    kept = _training_state(model, units, args)
    return ModelSummary(
        [
            LayerSummary(
                name, unit.activation, unit.levels, unit.bits, unit.rule.name, counts[name], *kept.get(name, ("", ""))
            )
            for name, unit in units
        ],
        float_activations(model),
    )


def _training_state(model: nn.Module, units, args) -> Dict[str, Tuple[str, str]]:
    """``{name: (what the unit keeps, why)}`` from one training-mode forward under ``memory.packed()``.

    The forward's effects are undone: buffers (BatchNorm statistics) are restored and the RNG is forked.
    A unit called several times reports its first call. Where training mode refuses the example input
    (``BatchNorm1d`` on one sample) the column stays empty.
    """
    from lightning_ftprop.memory import packed  # memory imports nn, as summary does

    kept: Dict[str, Tuple[str, str]] = {}
    handles = []
    for name, unit in units:

        def hook(module, inputs, output, name=name):
            state = getattr(getattr(output, "grad_fn", None), "kept", None)
            if state is not None and name not in kept:
                kept[name] = state

        handles.append(unit.register_forward_hook(hook))
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    try:
        model.train()
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), packed():
            model(*args)
    except (RuntimeError, ValueError):  # a forward that training mode refuses (BatchNorm1d on one sample)
        kept.clear()
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    return kept
