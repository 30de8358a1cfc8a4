"""memory="packed" under torch.compile: the compiled graph keeps the units' bit codes, not float outputs.

A unit traced by ``torch.compile`` inside ``memory.packed()`` computes its output through its codes in
a selective-checkpointing region (:mod:`lightning_ftprop.compiled`); the gradients are bitwise those of
the compiled ``exact`` units.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import compiled, memory
from lightning_ftprop.models import get_model


def _net(activation: str, rule: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        ftp.make_unit(activation, rule=rule),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        ftp.make_unit(activation, rule=rule),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4),
    )


X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
Y = torch.arange(8) % 4


def _grads(model: nn.Module, packed: bool) -> dict:
    model.zero_grad(set_to_none=True)
    with memory.packed() if packed else contextlib.nullcontext():
        loss = nn.functional.cross_entropy(model(X), Y)
    loss.backward()
    return {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "activation, rule", [("sign", "soft_hinge"), ("sign", "sste"), ("step", "log_loss"), ("qrelu", "soft_hinge")]
)
def test_compiled_packed_units_keep_bits_and_match_compiled_exact(activation, rule):
    torch._dynamo.reset()
    model = _net(activation, rule)
    exact = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    packed = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    want, got = _grads(exact, False), _grads(packed, True)
    assert all(torch.equal(want[k], got[k]) for k in want)
    kept = memory.saved_bytes(packed, X, mode="packed").total
    assert kept < memory.saved_bytes(exact, X, mode="exact").total
    dtypes = []

    def hook(t):
        dtypes.append(t.dtype)
        return t

    with memory.packed(), torch.autograd.graph.saved_tensors_hooks(hook, lambda t: t):
        packed(X)
    assert torch.uint8 in dtypes  # the bit planes


def test_a_compiled_unit_gives_nan_for_nan_as_the_eager_one_does():
    z = torch.tensor([float("nan"), -1.0, 0.0, 2.0, float("inf"), -float("inf")], requires_grad=True)
    with memory.packed():
        h = torch.compile(lambda t: ftp.functional.sign(t), fullgraph=True, backend="aot_eager")(z)
    assert torch.equal(h.isnan(), ftp.functional.sign(z).isnan())
    assert torch.equal(h[1:], ftp.functional.sign(z)[1:])
    assert not compiled.packing_on()  # the switch is off outside packed()


@pytest.mark.slow
@pytest.mark.parametrize("net, shape", [("convnet4", (3, 32, 32)), ("resnet18", (3, 32, 32))])
def test_the_paper_networks_compile_with_fullgraph_under_packed(net, shape):
    """No graph break from the units (fullgraph=True), inductor, and the win shows in saved_bytes."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = get_model(net, activation="sign", rule="soft_hinge", num_classes=10)
    x = torch.randn(4, *shape)
    exact = memory.saved_bytes(torch.compile(copy.deepcopy(model), fullgraph=True), x, mode="exact").total
    packed = memory.saved_bytes(torch.compile(model, fullgraph=True), x, mode="packed").total
    assert packed < exact


def test_on_a_torch_that_drops_compiled_backwards_units_break_the_graph_and_keep_eager_gradients(monkeypatch):
    """torch 2.11 drops a compiled unit's backward (zero gradients): there the units refuse to be traced, so
    ``fullgraph=True`` raises, naming the torch needed, and a plain compile runs them eagerly."""
    from lightning_ftprop import functional

    monkeypatch.setattr(functional, "_COMPILE_SUPPORTED", False)
    model = _net("sign", "soft_hinge")
    want = _grads(copy.deepcopy(model), False)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"needs torch >= 2\.12"):
        torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")(X)
    torch._dynamo.reset()
    got = _grads(torch.compile(copy.deepcopy(model), backend="aot_eager"), False)
    assert all(torch.equal(want[k], got[k]) for k in want)
