"""The learning rules: registry, closed-form weighted backwards, and the explicit weighted loss."""

import pytest
import torch

from lightning_ftprop import functional as F
from lightning_ftprop.rules import Rule, available_rules, get_rule, register_rule

torch.manual_seed(0)
Z = torch.linspace(-3, 3, 61, dtype=torch.float64).repeat(4, 1)  # batch of 4, includes |z| = 1 exactly
G = torch.randn(4, 61, dtype=torch.float64)
G[0, :5] = 0.0  # t = 0: ignored units


def backward_of(fn, z, g, **kwargs):
    z = z.clone().requires_grad_(True)
    fn(z, **kwargs).backward(g)
    return z.grad


CLOSED_FORMS = {
    "ste": lambda z, g: g,
    "sste": lambda z, g: g * (z.abs() <= 1),
    "soft_hinge": lambda z, g: g * (1 - torch.tanh(z) ** 2),
    "hinge": lambda z, g: g * (z * torch.sign(g) > -1),
    "log_loss": lambda z, g: g * torch.sigmoid(z * torch.sign(g)),
}


def test_builtin_rules_are_registered():
    assert set(CLOSED_FORMS) <= set(available_rules())


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_weighted_sign_backward_matches_closed_form(name):
    grad = backward_of(F.sign, Z, G, rule=name)
    torch.testing.assert_close(grad, CLOSED_FORMS[name](Z, G).to(grad.dtype))


def test_soft_hinge_backward_is_tanh_surrogate():
    z = Z.clone().requires_grad_(True)
    torch.tanh(z).backward(G)
    torch.testing.assert_close(backward_of(F.sign, Z, G, rule="soft_hinge"), z.grad)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("weighted", [True, False])
def test_backward_equals_autograd_of_explicit_weighted_loss(name, weighted):
    """d/dz of sum_j w_j * L(z_j, t_j) with t = sign(-g), w = |g| (weighted) or |t| / B (unweighted)."""
    rule = get_rule(name)
    t = -torch.sign(G)
    weight = G.abs() if weighted else t.abs() / Z.shape[0]
    z = Z.clone().requires_grad_(True)
    (weight * rule.loss(z, t)).sum().backward()
    # The loss kinks (sste at |z| = 1, hinge at t*z = 1) have no derivative; compare elsewhere.
    smooth = ~torch.isclose((t * Z).abs(), torch.ones_like(Z))
    torch.testing.assert_close(backward_of(F.sign, Z, G, rule=name, weighted=weighted)[smooth], z.grad[smooth])


@pytest.mark.parametrize("name", ["ste", "sste", "soft_hinge"])
def test_surrogate_equals_target_dependent_form(name):
    rule = get_rule(name)
    generic = G.abs() * rule.grad(Z, -torch.sign(G))
    torch.testing.assert_close(G * rule.surrogate(Z), generic)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_unweighted_backward_uses_only_sign_of_gradient(name):
    rule = get_rule(name)
    t = -torch.sign(G)
    expected = t.abs() * rule.grad(Z, t) / Z.shape[0]
    got = backward_of(F.sign, Z, G, rule=name, weighted=False)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(backward_of(F.sign, Z, 7.5 * G, rule=name, weighted=False), got)


def test_soft_hinge_unweighted_is_sign_of_g_times_sech2_over_batch():
    got = backward_of(F.sign, Z, G, rule="soft_hinge", weighted=False)
    torch.testing.assert_close(got, torch.sign(G) * (1 - torch.tanh(Z) ** 2) / 4)


def test_ignored_units_get_zero_gradient_under_every_rule():
    for name in available_rules():
        for weighted in (True, False):
            assert torch.all(backward_of(F.sign, Z, G, rule=name, weighted=weighted)[0, :5] == 0)


def test_unknown_rule_lists_valid_names():
    with pytest.raises(ValueError, match="unknown rule 'nope'.*soft_hinge.*"):
        get_rule("nope")
    with pytest.raises(ValueError, match="sste"):
        F.sign(torch.zeros(2), rule="nope")


def test_registered_custom_rule_drives_the_backward():
    square = Rule("test_square", loss=lambda z, t: (z - t) ** 2, grad=lambda z, t: 2 * (z - t))
    register_rule(square, overwrite=True)
    assert "test_square" in available_rules()
    expected = G.abs() * 2 * (Z + torch.sign(G))
    torch.testing.assert_close(backward_of(F.sign, Z, G, rule="test_square"), expected)


def test_register_rule_refuses_silent_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_rule(Rule("soft_hinge", loss=lambda z, t: z, grad=lambda z, t: z))


def test_soft_hinge_backward_has_no_cancellation_where_tanh_saturates():
    """``1 - tanh(z)^2`` in float32 is 0 from |z| ~ 9; the rule's ``4y(1 - y)`` keeps its digits."""
    z = torch.linspace(-12, 12, 4801)
    g = torch.ones_like(z)
    truth = 1 - torch.tanh(z.double()) ** 2
    got = backward_of(F.sign, z, g, rule="soft_hinge").double()
    assert (got > 0).all()
    assert float(((got - truth).abs() / truth).max()) < 1e-6
    assert float((1 - torch.tanh(z) ** 2).eq(0).sum()) > 0  # the textbook form does cancel here


def test_soft_hinge_surrogate_and_loss_gradient_agree_with_the_fused_backward():
    rule = get_rule("soft_hinge")
    z, g = Z.float(), G.float()
    torch.testing.assert_close(rule.fused(g, z), g * rule.surrogate(z))
    torch.testing.assert_close(g.abs() * rule.grad(z, -torch.sign(g)), rule.fused(g, z))
