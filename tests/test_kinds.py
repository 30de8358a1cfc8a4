"""Unit kinds: one object carries a unit's thresholds, values, forward, codes and bits, and a new kind works everywhere."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from conftest import assert_grads_close, parameter_grads
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import functional as F
from lightning_ftprop.diagnostics import rule_coordinates
from lightning_ftprop.export import fold_thresholds, freeze
from lightning_ftprop.kinds import KINDS, QReLUKind, SignKind, StepKind, UnitKind, register_kind, unregister_kind


class Ternary(UnitKind):
    """-1, 0, +1 with thresholds at -1/2 and +1/2: the worked example of docs/units.md."""

    name = "ternary"
    thetas = (Fraction(-1, 2), Fraction(1, 2))
    values = (Fraction(-1), Fraction(0), Fraction(1))


@pytest.fixture
def ternary():
    register_kind(Ternary)
    try:
        yield Ternary()
    finally:
        unregister_kind("ternary")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def test_the_built_in_kinds_describe_sign_step_and_qrelu():
    assert (SignKind().values, SignKind().thetas, SignKind().code_map) == ((-1, 1), (0,), (2, -1, 1))
    assert (StepKind().levels, StepKind().bits, StepKind().code_map) == (2, 1, (1, 0, 1))
    kind = QReLUKind(5)
    assert kind.levels == 6 and kind.bits == 3 and kind.code_map == (1, 0, 5)
    assert kind.thetas == tuple(Fraction(k, 4) for k in range(5)) and kind == QReLUKind(5) != QReLUKind(3)
    assert kind.affine_maps("single") == [(2, -1, 1.0)]  # u = 2z - 1: the paper's code
    assert [scale for _, _, scale in kind.affine_maps("per_threshold")] == [1 / 5] * 5


def test_units_and_their_autograd_nodes_carry_their_kind():
    z = torch.randn(8, requires_grad=True)
    for unit, kind in ((ftp.Sign(), SignKind()), (ftp.Step(), StepKind()), (ftp.QReLU(thresholds=5), QReLUKind(5))):
        h = unit(z)
        assert unit.kind == kind and F.output_kind(h.grad_fn) == kind
        assert (unit.levels, unit.bits, unit.activation) == (kind.levels, kind.bits, kind.name)


@pytest.mark.parametrize("kind", [SignKind(), StepKind(), QReLUKind(3), QReLUKind(5)], ids=repr)
def test_every_kinds_codes_decode_to_its_forward_bitwise(kind):
    z = torch.cat([torch.linspace(-2, 2, 4001), torch.tensor([0.0, -0.0, 0.5, 1.0, float("inf"), -float("inf")])])
    codes = kind.index(z)
    assert torch.equal(kind.decode(codes, z.dtype), kind.forward(z))
    assert torch.equal(UnitKind.index(kind, z), codes)  # the generic compare gives the kind's own codes


def test_a_new_kind_is_one_subclass_and_works_through_convert_memory_export_and_diagnostics(ternary):
    assert ftp.make_unit("ternary", "sste").kind == ternary
    model = _net()
    assert ftp.convert(model, "ternary", "soft_hinge") == ["2", "4"]
    x = torch.randn(32, 6)
    h = model[2](torch.tensor([-0.7, -0.5, 0.1, 0.5, 0.9]))
    assert h.tolist() == [-1.0, -1.0, 0.0, 0.0, 1.0]  # ties stay below the threshold, as sign(0) = -1

    # memory: the default mode packs its outputs in 2 bits and keeps the gradients of exact
    exact = ftp.memory.saved_bytes(model, x, mode="exact")
    packed = ftp.memory.saved_bytes(model, x, mode="packed")
    assert packed.by_module["5"] == 32 * 16 * 2 // 8 < exact.by_module["5"]
    grads = {}
    for mode in ("exact", "packed", "recompute"):
        m = copy.deepcopy(model)
        ftp.memory.MemoryMode(mode).prepare(m)
        runner = ftp.memory.MemoryMode(mode)
        runner.begin_step()
        try:
            m(x).square().mean().backward()
        finally:
            runner.end_step()
        grads[mode] = parameter_grads(m)
    assert_grads_close(grads["packed"], grads["exact"], rtol=0.0)
    assert_grads_close(grads["recompute"], grads["exact"], rtol=1e-5)

    # export: frozen and folded (BatchNorm into per-channel thresholds) give the model's outputs
    model.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(freeze(model)(x), expected)
        assert torch.allclose(fold_thresholds(model)(x), expected, atol=1e-5)
    assert type(freeze(model)[2]).__name__ == "FrozenUnit" and freeze(model)[2].thetas == [-0.5, 0.5]

    # the per-unit statistics read the kind's coordinates: one, u = 2z, in single mode
    (u,) = rule_coordinates(model[2], torch.tensor([0.25]))
    assert u.tolist() == [0.5]
    assert str(ftp.summary(model, x)).splitlines()[1].split()[1:3] == ["ternary", "3"]


def test_a_new_kind_in_per_threshold_mode_sums_one_rule_per_threshold(ternary):
    z = torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5], requires_grad=True)
    F.threshold(z, ternary, "sste", mode="per_threshold").sum().backward()
    # u_k = z - theta_k, each scaled by 1/2; sste passes g where |u_k| <= 1: both windows hold every z here
    assert z.grad.tolist() == [1.0] * 5


def test_bad_kinds_are_refused_with_what_is_allowed():
    with pytest.raises(ValueError, match="needs a new name; 'sign' is empty or taken"):

        @register_kind
        class Sign2(UnitKind):
            name = "sign"
            thetas = (Fraction(0),)
            values = (Fraction(0), Fraction(1))

    with pytest.raises(TypeError, match="register_kind\\(\\) takes a UnitKind subclass"):
        register_kind(int)
    with pytest.raises(ValueError, match="unknown mode 'per_threshold' for sign; valid modes are: single"):
        ftp.ThresholdUnit(SignKind(), mode="per_threshold")
    with pytest.raises(ValueError, match="unknown activation 'ternary'; valid activations are: sign, step, qrelu"):
        ftp.make_unit("ternary")
    assert list(KINDS) == ["sign", "step", "qrelu"]
