"""A table of a model's threshold layers, in the spirit of ``larq.models.summary``.

>>> print(summary(model, torch.randn(1, 3, 32, 32)))
name    activation  levels (bits)  rule        elements/sample  inference bits/sample (as float32)
act1    sign        2 (1)          soft_hinge  9,248            9,248 (295,936)
...
total: 3 threshold layers, 14,368 elements/sample = 1.8 KB at their bit widths (56.1 KB as float32)
left in float: 1 activation: head.act (torch.nn.modules.activation.GELU)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Tuple

import torch
from torch import nn

from lightning_ftprop.convert import float_activations, threshold_units

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass
class LayerSummary:
    name: str
    activation: str
    levels: int
    bits: int
    rule: str
    elements: int  # activation elements per sample

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
    layers: List[LayerSummary]
    #: ``(name, class path or function)`` of every activation still in float (excluded or unmatched).
    left_in_float: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def total_elements(self) -> int:
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
        )
        rows = [header] + [
            (
                layer.name,
                layer.activation,
                f"{layer.levels} ({layer.bits})",
                layer.rule,
                f"{layer.elements:,}",
                f"{layer.inference_bits:,} ({layer.float32_bits:,})",
            )
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(
            f"total: {len(self.layers)} threshold layers, {self.total_elements:,} elements/sample = "
            f"{_kb(self.total_bits / 8)} at their bit widths ({_kb(self.total_elements * 4)} as float32)"
        )
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
    return ModelSummary(
        [
            LayerSummary(name, unit.activation, unit.levels, unit.bits, unit.rule.name, counts[name])
            for name, unit in units
        ],
        float_activations(model),
    )
