"""Every rule's backward equals its closed form in z's own coordinate, at and around every edge.

The closed forms are computed in exact rational arithmetic (``fractions.Fraction``) from the float
inputs, so no rounding of a shifted coordinate (qrelu's ``u = 2z - 1``, ``u = z - k/(n-1)``) can hide
in the reference.
"""

from fractions import Fraction

import pytest
import torch

import lightning_ftprop as ftp
from lightning_ftprop import functional as F
from lightning_ftprop.rules import get_rule

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
MASK_RULES = ("sste", "hinge")  # rules whose backward has a jump: the values must match bit for bit
STEPS = 4  # thresholds at 0, 1/3, 2/3, 1: one of them is no float, which is the hard case


def _neighbours(points, dtype, ulps=3):
    """``points`` and the ``ulps`` floats of ``dtype`` on each side of them."""
    out = []
    for p in points:
        x = torch.tensor(float(p), dtype=torch.float64).to(dtype)
        for direction in (-torch.inf, torch.inf):
            y = x
            for _ in range(ulps):
                y = torch.nextafter(y, torch.tensor(direction, dtype=dtype))
                out.append(y)
        out.append(x)
    return torch.stack(out)


def sweep(dtype):
    """Inputs at and around every edge of every coordinate, tiny magnitudes and zeros."""
    edges = {Fraction(0), Fraction(1), Fraction(1, 2), Fraction(-1), Fraction(2)}  # u = 2z - 1 = -1, 0, 1; sign/step
    for k in range(STEPS):
        theta = Fraction(k, STEPS - 1)
        edges |= {theta, theta - 1, theta + 1}  # u = z - theta = 0, -1, +1
    tiny = [s * m for s in (1, -1) for m in (1e-3, 1e-7, 1e-8, 1e-30, torch.finfo(dtype).tiny)]
    tiny += [s * torch.finfo(dtype).tiny * torch.finfo(dtype).eps for s in (1, -1)]  # smallest subnormal
    z = torch.cat([_neighbours(sorted(edges), dtype), torch.tensor(tiny, dtype=torch.float64).to(dtype)])
    return torch.cat([z, torch.tensor([0.0, -0.0], dtype=dtype)]).unique()


def exact_grad(rule_name, u: Fraction, g: float, weighted: bool) -> Fraction:
    """The closed form of one unit's backward at the real coordinate ``u`` (``B = 1``)."""
    t = -1 if g > 0 else 1 if g < 0 else 0
    if rule_name == "sste":
        d = -t if abs(t * u) <= 1 else 0
    elif rule_name == "hinge":
        d = -t if t * u < 1 else 0
    else:
        raise AssertionError(rule_name)
    return Fraction(abs(g) if weighted else abs(t)) * d


def coordinates(activation, mode):
    """``[(a, b, scale)]``: the rule sees ``u = a*z + b`` and the backward sums ``scale * grad``."""
    if activation in ("sign", "step"):
        return [(1, Fraction(0), 1)]
    if mode == "single":
        return [(2, Fraction(-1), 1)]
    return [(1, -Fraction(k, STEPS - 1), Fraction(1, STEPS)) for k in range(STEPS)]


def run(activation, mode, z, rule, weighted, g):
    """The backward at every element of ``z`` with upstream gradient ``g``; one sample (``B = 1``)."""
    z = z.reshape(1, -1).clone().requires_grad_()
    if activation == "qrelu":
        out = F.qrelu(z, rule, weighted, thresholds=STEPS, mode=mode)
    else:
        out = getattr(F, activation)(z, rule, weighted)
    (grad,) = torch.autograd.grad(out, z, torch.full_like(out, g))
    return grad[0]


CASES = [("sign", None), ("step", None), ("qrelu", "single"), ("qrelu", "per_threshold")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation, mode", CASES)
def test_masked_rules_equal_their_closed_form_at_every_edge(activation, mode, dtype):
    z = sweep(dtype)
    mismatches = []
    for rule in MASK_RULES:
        for weighted in (True, False):
            for g in (1.0, -1.0, 0.5):
                got = run(activation, mode, z, rule, weighted, g)
                for zi, gi in zip(z.tolist(), got.tolist()):
                    # the backward sums scale * grad in the dtype: rebuild that sum from exact masks
                    want = torch.zeros((), dtype=dtype)
                    for a, b, scale in coordinates(activation, mode):
                        term = exact_grad(rule, a * Fraction(zi) + b, g, weighted)
                        want = want + float(scale) * torch.tensor(float(term), dtype=dtype)
                    if gi != want.item():
                        mismatches.append((rule, weighted, g, zi, gi, want.item()))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qrelu_sste_passes_nothing_below_zero_even_for_tiny_inputs(dtype):
    """The defect this guards: ``2 * (-1e-8) - 1`` rounds to ``-1`` and the mask let it through."""
    z = torch.tensor([-1e-8, -1e-30, -torch.finfo(dtype).tiny, 0.0, 1e-30, 1.0], dtype=dtype, requires_grad=True)
    F.qrelu(z, "sste").sum().backward()
    assert z.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ("single", "per_threshold"))
def test_smooth_rules_stay_within_rounding_of_the_exact_coordinate(mode, dtype):
    """soft_hinge has no edge, so rounding ``u`` flips nothing; what is left is float evaluation.

    ``g * (1 - tanh(u)^2)`` in a dtype is within ``2 eps`` (absolute; the values are <= 1) of the
    exact value, and the coordinate's rounding (at most 1 ulp of ``u``, slope < 0.8) adds < ``eps``.
    """
    z = sweep(dtype)
    z = z[z.abs() < 4]
    got = run("qrelu", mode, z, "soft_hinge", True, 1.0).double()
    want = torch.zeros_like(got)
    for a, b, scale in coordinates("qrelu", mode):
        u = torch.tensor([float(a * Fraction(zi) + b) for zi in z.tolist()], dtype=torch.float64)
        want += float(scale) * get_rule("soft_hinge").surrogate(u)
    assert (got - want).abs().max().item() <= 4 * torch.finfo(dtype).eps


def test_edge_exact_backward_compiles_from_a_cold_cache():
    """The edge constants are computed while torch.compile traces the backward (fullgraph)."""
    F._edge_fix.cache.clear()
    F._neighbours.cache.clear()
    torch._dynamo.reset()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 6), ftp.QReLU("hinge"), ftp.QReLU("sste", thresholds=4, mode="per_threshold")
    )
    torch.compile(net, fullgraph=True, backend="aot_eager")(x).square().sum().backward()
    compiled = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net(x).square().sum().backward()
    for a, b in zip(compiled, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class ClosedFormQReLU(torch.autograd.Function):
    """An independent plain reference: the paper's 2-bit qReLU, backward ``g * 1[0 <= z <= 1]``."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.clamp(torch.ceil(2 * z), 0, 3) / 3

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * ((z >= 0) & (z <= 1)).to(g.dtype)


def test_qrelu_sste_training_follows_the_closed_form_reference_bit_for_bit():
    """Pre-activations of scale 1e-7, where the rounded ``2z - 1`` used to pass gradients below 0."""

    def train(unit):
        torch.manual_seed(0)
        first, last = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)
        with torch.no_grad():
            first.weight.mul_(1e-7)
            first.bias.mul_(1e-7)
        optimizer = torch.optim.SGD([*first.parameters(), *last.parameters()], lr=1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(last(unit(first(x))), y).backward()
            optimizer.step()
        return [p.detach() for p in (*first.parameters(), *last.parameters())]

    ours, reference = train(ftp.QReLU("sste")), train(ClosedFormQReLU.apply)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))
    assert not torch.equal(ours[0], train(lambda z: z)[0])  # the gradient does reach the first layer
