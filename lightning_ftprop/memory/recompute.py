"""Recompute: re-run the forward of each segment between threshold units in the backward.

Each segment between threshold units (``conv -> BN -> pool -> unit``) runs under non-reentrant
``torch.utils.checkpoint`` and keeps only its input, packed (:func:`lightning_ftprop.memory.pack`);
the backward recomputes the segment from those bits. ``z`` is recomputed exactly, so every rule,
``soft_hinge`` included, keeps its exact gradient (equal to ``"exact"`` up to float reassociation).

What can be segmented: the children of every ``nn.Sequential`` are cut after each child that is or
contains a threshold unit, so ``[conv, pool, unit]`` is a segment and a residual block whose output
is a unit output (torchvision's ``BasicBlock``) is one segment. Units called from another module's
own ``forward`` (torchvision ResNet's stem ``relu``) stay un-recomputed (still packed), and
:func:`recompute` names them in one warning.

What this module uses of the rest of the package: :func:`~lightning_ftprop.memory.hooks.pack` and
:func:`~lightning_ftprop.memory.hooks.unpack` for the segment inputs, and
:func:`~lightning_ftprop.memory.unit_state.float_state` and
:func:`~lightning_ftprop.memory.unit_state.recomputation` around each segment's forward and
recomputation (see :mod:`lightning_ftprop.memory.unit_state`).
"""

from __future__ import annotations

import contextlib
import functools
import types
import warnings
from typing import Callable, Iterator, List, Sequence

import torch
from torch import nn

from lightning_ftprop.memory import unit_state
from lightning_ftprop.memory.hooks import pack, unpack
from lightning_ftprop.nn import ThresholdUnit

__all__ = ["recompute"]

_SEGMENTS = "_ftprop_segments"  # instance attribute of a segmented nn.Sequential


def _has_units(module: nn.Module) -> bool:
    return any(isinstance(m, ThresholdUnit) for m in module.modules())


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _chain(modules: Sequence[nn.Module], x):
    for module in modules:
        x = module(x)
    return x


@contextlib.contextmanager
def _keep_running_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore BatchNorm running statistics after a recomputation: the forward already updated them."""
    norms = [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
    ]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in norms]
    try:
        with unit_state.recomputation(), unit_state.float_state():
            yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, kept):
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, old in zip(live, buffers):
                    b.copy_(old)


def _contexts(modules: Sequence[nn.Module]):
    # Inside a segment the units keep z (the saved tensors are recomputed anyway), in the forward and in
    # the recomputation alike, so that both save the same tensors.
    return unit_state.float_state(), _keep_running_stats(modules)


def _run_segment(segment, x):
    if isinstance(segment, nn.Module):  # a nested, itself segmented, nn.Sequential
        return segment(x)
    if not torch.is_grad_enabled():
        return _chain(segment, x)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):  # the segment's input is saved packed
        return torch.utils.checkpoint.checkpoint(
            functools.partial(_chain, segment),
            x,
            use_reentrant=False,
            context_fn=functools.partial(_contexts, segment),
        )


def _segmented_forward(self: nn.Sequential, x):
    """``nn.Sequential.forward`` with each segment recomputed in the backward from its packed input."""
    for segment in self.__dict__[_SEGMENTS]:
        x = _run_segment(segment, x)
    return x


def _segments(sequential: nn.Sequential, plan: Callable) -> List:
    """Cut the children after each child that is or holds a threshold unit."""
    segments: List = []
    current: List[nn.Module] = []
    for name, child in sequential._modules.items():
        if child is None:
            continue
        if _plain_sequential(child) and _has_units(child):
            if current:
                segments.append(current)
                current = []
            plan(child, name)
            segments.append(child)
            continue
        current.append(child)
        if _has_units(child):
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def recompute(model: nn.Module, enable: bool = True) -> List[str]:
    """Make ``model`` recompute the segments between its threshold units in the backward (in place).

    ``recompute(model, enable=False)`` undoes it. Calling it again re-plans the segments (after you
    change the model). Only the ``forward`` of the segmented ``nn.Sequential`` instances changes (an
    instance attribute); parameters, buffers and ``state_dict`` keys stay as they are. Under
    ``torch.no_grad`` the segments run plainly. BatchNorm running statistics are updated once per
    forward, as without recomputation, and dropout draws the same mask (checkpoint restores the RNG).

    Returns:
        The names of the segmented ``nn.Sequential`` modules (``""`` is the model itself).

    Warns:
        UserWarning: once, naming the threshold units that no segment covers (called from a
        ``forward`` other than ``nn.Sequential``'s); they train un-recomputed.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``enable=True`` on a model without threshold units.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recompute() expects an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if _SEGMENTS in module.__dict__:
            del module.__dict__[_SEGMENTS]
            module.__dict__.pop("forward", None)
    if not enable:
        return []
    if not _has_units(model):
        raise ValueError(
            f"recompute() found no threshold unit in {type(model).__name__}; convert it first "
            "(lightning_ftprop.convert) - there is nothing to recompute from packed bits"
        )
    segmented: List[str] = []
    uncovered: List[str] = []
    seen = set()

    def plan(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if isinstance(module, ThresholdUnit):
            uncovered.append(name or type(module).__name__)
        elif not _has_units(module):
            return
        elif _plain_sequential(module):
            segments = _segments(module, lambda child, child_name: plan(child, _join(name, child_name)))
            module.__dict__[_SEGMENTS] = segments
            module.__dict__["forward"] = types.MethodType(_segmented_forward, module)
            segmented.append(name)
        else:
            for child_name, child in module._modules.items():
                if child is not None:
                    plan(child, _join(name, child_name))

    plan(model, "")
    if uncovered:
        warnings.warn(
            f"recompute(): {len(uncovered)} threshold unit(s) are called from a forward other than "
            f"nn.Sequential's, so no segment covers them; they train un-recomputed (still packed). Group "
            f"each with the layers before it in an nn.Sequential to cover it. Not covered: {', '.join(uncovered)}",
            UserWarning,
            stacklevel=2,
        )
    return segmented


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child
