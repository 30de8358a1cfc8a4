"""Forward values, qrelu backward modes, torch.compile, autocast and bad input of the activations."""

import pytest
import torch

import lightning_ftprop as ftp
from lightning_ftprop import functional as F

NAN = float("nan")


def test_sign_forward_is_plus_minus_one_with_sign_zero_negative():
    z = torch.tensor([-2.0, -1e-30, 0.0, 1e-30, 3.0])
    assert F.sign(z).tolist() == [-1, -1, -1, 1, 1]


def test_step_forward_is_zero_one():
    z = torch.tensor([-2.0, 0.0, 1e-30, 3.0])
    assert F.step(z).tolist() == [0, 0, 1, 1]


def test_qrelu_forward_is_right_closed_two_bit_staircase():
    z = torch.tensor([-1.0, 0.0, 0.01, 0.5, 0.51, 1.0, 1.01, 5.0])
    assert torch.equal(F.qrelu(z) * 3, torch.tensor([0.0, 0, 1, 1, 2, 2, 3, 3]))


def test_qrelu_five_thresholds_has_six_levels_at_quarter_steps():
    z = torch.tensor([0.0, 0.25, 0.26, 0.5, 0.75, 1.0, 1.2])
    assert torch.equal(F.qrelu(z, thresholds=5) * 5, torch.tensor([0.0, 1, 2, 2, 3, 4, 5]))
    assert ftp.QReLU(thresholds=5).levels == 6 and ftp.QReLU(thresholds=5).bits == 3


@pytest.mark.parametrize("fn", [F.sign, F.step, F.qrelu])
def test_nan_in_gives_nan_out(fn):
    out = fn(torch.tensor([NAN, 1.0]))
    assert torch.isnan(out[0]) and not torch.isnan(out[1])


def _grad(fn, z, g, **kwargs):
    z = z.clone().requires_grad_(True)
    fn(z, **kwargs).backward(g)
    return z.grad


Z = torch.linspace(-1, 2, 31, dtype=torch.float64).repeat(2, 1)
G = torch.randn(2, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_qrelu_single_soft_hinge_is_tanh_centred_at_half():
    torch.testing.assert_close(_grad(F.qrelu, Z, G), G * (1 - torch.tanh(2 * Z - 1) ** 2))


def test_qrelu_single_sste_passes_gradient_on_unit_interval():
    torch.testing.assert_close(_grad(F.qrelu, Z, G, rule="sste"), G * ((Z >= 0) & (Z <= 1)))


@pytest.mark.parametrize("thresholds", [3, 5])
def test_qrelu_per_threshold_soft_hinge_sums_one_bump_per_threshold(thresholds):
    bumps = sum(1 - torch.tanh(Z - k / (thresholds - 1)) ** 2 for k in range(thresholds))
    got = _grad(F.qrelu, Z, G, thresholds=thresholds, mode="per_threshold")
    torch.testing.assert_close(got, G * bumps / thresholds)


def test_qrelu_per_threshold_sste_counts_thresholds_within_one():
    count = sum(((Z - k / 2).abs() <= 1).double() for k in range(3))
    torch.testing.assert_close(_grad(F.qrelu, Z, G, rule="sste", mode="per_threshold"), G * count / 3)


def test_step_uses_rule_centred_at_zero():
    torch.testing.assert_close(_grad(F.step, Z, G), G * (1 - torch.tanh(Z) ** 2))


def _tiny_net(unit):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), unit, torch.nn.Linear(8, 8), unit, torch.nn.Linear(8, 3))


@pytest.mark.parametrize(
    "unit",
    [
        ftp.Sign(),
        ftp.Sign("sste"),
        ftp.Step("hinge"),
        ftp.QReLU(),
        ftp.QReLU("sste", mode="per_threshold", thresholds=5),
        ftp.Sign("log_loss", weighted=False),
        ftp.Sign(keep="uint8"),
        ftp.QReLU("sste", keep="bf16"),
    ],
    ids=repr,
)
def test_compiled_fullgraph_gradients_equal_eager(unit):
    torch._dynamo.reset()  # each case compiles Sequential.forward afresh; avoid the recompile limit
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    net = _tiny_net(unit)
    net(x).square().sum().backward()
    eager = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.compile(net, fullgraph=True, backend="aot_eager")(x).square().sum().backward()
    for a, b in zip(eager, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_inductor_compiled_sign_net_gradients_equal_eager():
    torch._dynamo.reset()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    net = _tiny_net(ftp.Sign())
    net(x).square().sum().backward()
    eager = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.compile(net, fullgraph=True)(x).square().sum().backward()
    for a, b in zip(eager, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unit", [ftp.Sign(), ftp.Step("sste"), ftp.QReLU(), ftp.QReLU(mode="per_threshold")], ids=repr)
def test_units_run_under_bf16_autocast_with_finite_gradients(unit):
    net = _tiny_net(unit)
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in net[:2].parameters())


@pytest.mark.parametrize("fn", [F.sign, F.step, F.qrelu])
def test_integer_input_raises_type_error(fn):
    with pytest.raises(TypeError, match="torch.int64.*float32"):
        fn(torch.arange(3))


def test_bad_qrelu_arguments_name_the_value():
    with pytest.raises(ValueError, match="'middle'.*single, per_threshold"):
        F.qrelu(torch.zeros(2), mode="middle")
    with pytest.raises(ValueError, match="thresholds must be an int >= 2, got 1"):
        ftp.QReLU(thresholds=1)


def test_unit_repr_shows_configuration():
    assert repr(ftp.Sign("sste")) == "Sign(rule='sste', weighted=True)"
    assert (
        repr(ftp.QReLU(weighted=False, thresholds=5))
        == "QReLU(thresholds=5, mode='single', rule='soft_hinge', weighted=False)"
    )


def test_make_unit_rejects_unknown_activation():
    with pytest.raises(ValueError, match="'relu'.*sign, step, qrelu"):
        ftp.make_unit("relu")


def test_units_have_no_parameters_or_buffers():
    for unit in (ftp.Sign(), ftp.Step(), ftp.QReLU()):
        assert not list(unit.parameters()) and not list(unit.buffers())


@pytest.mark.parametrize("name", ["ste", "sste", "soft_hinge"])
def test_fused_backward_equals_surrogate_product(name):
    rule = ftp.get_rule(name)
    z = torch.cat([torch.linspace(-3, 3, 601), torch.tensor([-1.0, 1.0])])
    g = torch.randn_like(z)
    torch.testing.assert_close(rule.fused(g, z), g * rule.surrogate(z))


def _saved_bytes(fn, z, **kwargs):
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: sizes.append(t.numel() * t.element_size()) or t, lambda t: t
    ):
        out = fn(z.clone().requires_grad_(True), **kwargs)
    return sum(sizes), out


@pytest.mark.parametrize(
    "fn, kwargs",
    [
        (F.sign, dict(rule="sste")),
        (F.step, dict(rule="sste")),
        (F.qrelu, dict(rule="sste")),
        (F.qrelu, dict(rule="sste", mode="per_threshold", thresholds=5)),
        (F.sign, dict(rule="ste")),
    ],
)
def test_uint8_saved_form_is_exact_for_indicator_rules_and_uses_one_byte(fn, kwargs):
    z = torch.cat([torch.linspace(-2, 2, 401), torch.tensor([-1.0, 0.0, 0.5, 1.0])]).repeat(3, 1)
    g = torch.randn_like(z)
    torch.testing.assert_close(_grad(fn, z, g, keep="uint8", **kwargs), _grad(fn, z, g, **kwargs))
    nbytes, _ = _saved_bytes(fn, z, keep="uint8", **kwargs)
    assert nbytes == (0 if kwargs["rule"] == "ste" else z.numel())


@pytest.mark.parametrize("keep, tol", [("uint8", 1 / 510), ("bf16", 2**-8)])
@pytest.mark.parametrize("fn, kwargs", [(F.sign, {}), (F.qrelu, {}), (F.qrelu, dict(mode="per_threshold"))])
def test_compact_soft_hinge_backward_is_within_its_encoding_error(fn, kwargs, keep, tol):
    z = torch.linspace(-3, 3, 601).repeat(2, 1)
    g = torch.randn_like(z)
    exact = _grad(fn, z, g, **kwargs)
    compact = _grad(fn, z, g, keep=keep, **kwargs)
    assert not torch.equal(exact, compact)
    assert torch.all((compact - exact).abs() <= tol * g.abs() + 1e-7)


def test_target_dependent_rules_keep_z_whatever_the_saved_form():
    z = torch.linspace(-3, 3, 61).repeat(2, 1)
    g = torch.randn_like(z)
    for rule in ("hinge", "log_loss"):
        torch.testing.assert_close(_grad(F.sign, z, g, rule=rule, keep="uint8"), _grad(F.sign, z, g, rule=rule))
        assert _saved_bytes(F.sign, z, rule=rule, keep="uint8")[0] == z.numel() * 4


def test_unknown_saved_form_lists_valid_ones():
    with pytest.raises(ValueError, match="'int4'.*input, bf16, uint8"):
        ftp.Sign(keep="int4")
