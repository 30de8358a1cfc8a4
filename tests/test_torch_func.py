"""The threshold functions under torch.func: vmap, grad, jacrev and functional_call.

Per-sample gradients from ``vmap(grad(f))`` must equal a Python loop that calls ``f`` on one sample
at a time, for every unit and every symmetric rule, weighted or not.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import lightning_ftprop as ftp
from lightning_ftprop import functional as F

UNITS = {
    "sign": lambda z, rule, weighted: F.sign(z, rule, weighted),
    "step": lambda z, rule, weighted: F.step(z, rule, weighted),
    "qrelu": lambda z, rule, weighted: F.qrelu(z, rule, weighted, thresholds=3),
    "qrelu_per_threshold": lambda z, rule, weighted: F.qrelu(z, rule, weighted, thresholds=4, mode="per_threshold"),
}
RULES = ("ste", "sste", "soft_hinge")


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_vmap_grad_per_sample_gradients_equal_a_loop(unit, rule, weighted):
    torch.manual_seed(0)
    x = torch.randn(6, 5) * 1.5
    weights = torch.randn(5)

    def loss(z):  # one sample, seen as a batch of one: weighted=False divides by B = 1
        return (UNITS[unit](z.unsqueeze(0), rule, weighted) * weights).sum()

    batched = vmap(grad(loss))(x)
    loop = []
    for sample in x:
        sample = sample.clone().requires_grad_()
        loss(sample).backward()
        loop.append(sample.grad)
    assert torch.equal(batched, torch.stack(loop))
    assert batched.abs().sum() > 0


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_jacrev_is_the_diagonal_of_the_backward(unit):
    z = torch.linspace(-1.5, 1.5, 7)
    jacobian = jacrev(lambda v: UNITS[unit](v, "soft_hinge", True))(z)
    z = z.clone().requires_grad_()
    UNITS[unit](z, "soft_hinge", True).sum().backward()
    assert torch.equal(jacobian, torch.diag(z.grad))


def test_per_sample_parameter_gradients_of_a_converted_model_equal_a_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    ftp.convert(model, mapping={"ReLU": "sign", "Tanh": "qrelu"}, rule="sste")
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(batched[name][i], p.grad, rtol=1e-6, atol=1e-7)
    assert batched["0.weight"].abs().sum() > 0  # the gradient crossed both threshold layers
