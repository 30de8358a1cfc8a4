"""Shared test helpers and fixtures.

Markers (registered in pyproject.toml): ``slow`` (longer than a few seconds: training runs, subprocess
launches, compiles), ``ddp`` (2 CPU processes through a Lightning strategy or Fabric), ``slurm`` (a
one-node SLURM cluster). ``pytest -m "not slow"`` is the quick loop; ``.ci/run`` runs everything.

Helpers shared by the memory tests' gradient comparisons live here: :func:`assert_grads_close` and
:func:`parameter_grads`.
"""

from __future__ import annotations

from typing import Dict

import pytest
import torch
from torch import nn


def parameter_grads(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{name: grad}`` of ``model``'s parameters (a compiled model's ``_orig_mod.`` prefix removed)."""
    return {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


def assert_grads_close(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], rtol: float) -> None:
    """Each gradient within ``rtol`` of the larger of its own and all gradients' largest entry (a near-zero
    tensor, such as a bias before BatchNorm, is held to the scale of the rest); ``rtol=0`` is bitwise."""
    scale = max(float(g.abs().max()) for g in want.values())
    assert got.keys() == want.keys()
    for name in want:
        err = float((got[name] - want[name]).abs().max())
        assert err <= rtol * max(scale, float(want[name].abs().max())), (name, err, scale)


def pytest_collection_modifyitems(config, items):
    """Everything that starts processes (``ddp``, ``slurm``) is also ``slow``."""
    for item in items:
        if item.get_closest_marker("ddp") or item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.slow)
