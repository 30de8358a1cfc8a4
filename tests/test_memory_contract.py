"""The gradient contract of the memory modes (docs/memory.md), on every path people train with.

* fp32: ``packed`` and ``recompute`` equal ``exact`` within rtol 1e-5 (bitwise on the CPU kernels);
* bf16 autocast: equal to ``exact`` under the same autocast within bfloat16 rounding;
* ``create_graph=True`` (gradient penalty, Hessian-vector product): equal to ``exact`` to second order;
* a BatchNorm kernel that rounds differently from the CPU's: smooth rules still rebuild ``z``, rules
  whose backward jumps keep exact state.
"""

from __future__ import annotations

import ast
import copy
import pathlib
import warnings

import pytest
import torch
from conftest import assert_grads_close
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory, torch_private
from lightning_ftprop.memory import rebuild

RULES = ftp.available_rules()
ROOT = pathlib.Path(__file__).resolve().parents[1]
BF16 = 2.0**-8  # bfloat16's unit roundoff


def _mlp(rule: str, batchnorm: bool) -> nn.Module:
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(12)] if batchnorm else []
    return nn.Sequential(nn.Linear(6, 12), *norm, ftp.Sign(rule), nn.Linear(12, 3))


def _convnet(rule: str, activation: str = "sign") -> nn.Module:
    torch.manual_seed(0)
    unit = ftp.make_unit(activation, rule=rule)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        unit,
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        copy.deepcopy(unit),
        nn.Flatten(),
        nn.Linear(8 * 1 * 1, 4),
    )


X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
Y = torch.arange(8) % 4


def _context(mode: str):
    return memory.packed() if mode != "exact" else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


def _first_order(model: nn.Module, mode: str, bf16: bool = False) -> dict:
    if mode == "recompute":
        memory.recompute(model)
    grads = None
    for _ in range(2 if mode == "recompute" else 1):  # recompute's first forward finds the segments
        model.zero_grad(set_to_none=True)
        with _context(mode), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(X).float(), Y)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads


# --- fp32 and bf16 autocast --------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", ["packed", "recompute"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_packed_and_recompute_gradients_match_exact_on_the_same_path(rule, mode, bf16):
    model = _convnet(rule)
    want = _first_order(copy.deepcopy(model), "exact", bf16)
    got = _first_order(copy.deepcopy(model), mode, bf16)
    assert_grads_close(got, want, rtol=BF16 if bf16 else 1e-5)


def test_under_bf16_autocast_units_after_batchnorm_keep_nothing():
    model = _convnet("soft_hinge")
    kept = []
    for m in model.modules():
        if isinstance(m, ftp.ThresholdUnit):
            m.register_forward_hook(lambda m, i, out: kept.append(out.grad_fn.kept[0]))
    with memory.packed(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(X)
    assert kept == ["nothing", "nothing"]


def test_recompute_restores_the_forward_autocast_state_in_its_rerun():
    """The re-run in the backward feeds bf16 activations to the same bf16-cast weights (no dtype clash)."""
    model = _convnet("soft_hinge")
    memory.recompute(model)
    for _ in range(2):
        with memory.packed(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(X).float(), Y)
        loss.backward()  # raised "mat1 and mat2 must have the same dtype" before
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --- a BatchNorm kernel that rounds differently ------------------------------------------------------


def _without_fma(self, k=None, differentiable=False):
    """BatchNorm as a kernel without fma would compute it: ``((x - mean) * invstd) * weight + bias``."""
    if differentiable:
        return real_run(self, k, differentiable)
    node = self.node
    x = rebuild._first(node._saved_input.detach(), k)
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean, invstd = node._saved_result1.view(shape), node._saved_result2.view(shape)
    out = (x - mean) * invstd * node._saved_weight.detach().view(shape)
    return out + self.bias.view(shape) if self.bias is not None else out


real_run = rebuild._BatchNorm.run


@pytest.mark.parametrize(
    "rule, kept",
    [
        ("soft_hinge", "nothing"),  # smooth: the rebuild within rounding is used
        ("log_loss", "nothing"),
        ("sste", "1-bit mask"),  # jumps at |z| = 1: exact state instead
        ("hinge", "z (float32)"),
    ],
)
def test_a_batchnorm_that_rounds_differently_keeps_the_contract(rule, kept, monkeypatch):
    """With the rebuild computed in another order (no fma), it differs from z by rounding, not bitwise."""
    model = _convnet(rule)
    monkeypatch.setattr(rebuild._BatchNorm, "run", _without_fma)
    z = model[1](model[0](X))
    assert rebuild.check(rebuild.plan(z), z) == "rounding"
    seen = []
    model[2].register_forward_hook(lambda m, i, out: seen.append(out.grad_fn.kept[0]))
    with memory.packed():
        model(X)
    assert seen == [kept]
    want = _first_order(copy.deepcopy(model), "exact")
    got = _first_order(copy.deepcopy(model), "packed")
    assert_grads_close(got, want, rtol=1e-5)


def test_a_rebuild_that_does_not_match_keeps_z(monkeypatch):
    monkeypatch.setattr(
        rebuild._BatchNorm, "run", lambda self, k=None, differentiable=False: real_run(self, k, differentiable) * 1.01
    )
    model = _convnet("soft_hinge")
    seen = []
    model[2].register_forward_hook(lambda m, i, out: seen.append(out.grad_fn.kept))
    with memory.packed():
        model(X)
    assert seen == [("z (float32)", "the rebuild of z did not match z (kept z)")]


def test_each_layer_is_checked_in_its_first_step_only(monkeypatch):
    """A verdict is the kernels': a second step of the same shapes rebuilds z without checking again."""
    monkeypatch.setattr(rebuild, "_VERDICTS", {})
    checked = []
    real_check = rebuild._check
    monkeypatch.setattr(rebuild, "_check", lambda recipe, z: checked.append(z.shape) or real_check(recipe, z))
    model = _convnet("soft_hinge")
    kept = []
    for unit in (model[2], model[6]):
        unit.register_forward_hook(lambda m, i, out: kept.append(out.grad_fn.kept[0]))
    for _ in range(2):
        with memory.packed():
            model(X).sum().backward()
    assert len(checked) == 2  # two units, first step only
    assert kept == ["nothing"] * 4


def test_a_channels_last_network_keeps_the_contract():
    model = _convnet("soft_hinge").to(memory_format=torch.channels_last)
    x = X.contiguous(memory_format=torch.channels_last)

    def grads(mode):
        net = copy.deepcopy(model)
        with _context(mode):
            loss = nn.functional.cross_entropy(net(x), Y)
        loss.backward()
        return {n: p.grad for n, p in net.named_parameters()}

    assert_grads_close(grads("packed"), grads("exact"), rtol=1e-5)


def test_float64_and_float32_networks_in_one_process_both_rebuild_z_bitwise():
    for dtype in (torch.float64, torch.float32):
        model = _convnet("soft_hinge").to(dtype)
        kept: list = []
        model[2].register_forward_hook(lambda m, i, out, kept=kept: kept.append(out.grad_fn.kept[0]))
        grads = {}
        for mode in ("exact", "packed"):
            net = copy.deepcopy(model)
            with _context(mode):
                loss = nn.functional.cross_entropy(net(X.to(dtype)), Y)
            loss.backward()
            grads[mode] = {n: p.grad for n, p in net.named_parameters()}
        assert kept[-1] == "nothing", dtype
        assert all(torch.equal(grads["packed"][n], grads["exact"][n]) for n in grads["exact"]), dtype


# --- double backward -----------------------------------------------------------------------------------


def _second_order(model: nn.Module, mode: str, kind: str) -> dict:
    model.zero_grad(set_to_none=True)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with _context(mode):
        out = model(x).square().sum()
    if kind == "penalty":  # a gradient penalty: L + |dL/dx|^2
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        (out + gx.square().sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters()]  # a Hessian-vector product H v
    grads = torch.autograd.grad(out, params, create_graph=True)
    v = [torch.ones_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params, allow_unused=True)
    return {n: (h if h is not None else torch.zeros_like(p)) for (n, p), h in zip(model.named_parameters(), hvp)}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("batchnorm", [True, False], ids=["batchnorm", "linear"])
@pytest.mark.parametrize("kind", ["penalty", "hvp"])
def test_packed_gradients_match_exact_to_second_order(rule, batchnorm, kind):
    model = _mlp(rule, batchnorm)
    want = _second_order(copy.deepcopy(model), "exact", kind)
    got = _second_order(copy.deepcopy(model), "packed", kind)
    assert_grads_close(got, want, rtol=1e-5)


def test_double_backward_through_a_z_rebuilt_from_packed_bits_raises_clearly():
    torch.manual_seed(0)
    model = ftp.models.get_model("resnet18", activation="sign", rule="soft_hinge", num_classes=4)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with memory.packed():
        out = model(x).square().sum()
    with pytest.raises(RuntimeError, match="create_graph=True.*memory='exact'"):
        torch.autograd.grad(out, x, create_graph=True)


def test_double_backward_under_recompute_raises_clearly():
    model = _mlp("soft_hinge", True)
    memory.recompute(model)
    x = torch.randn(16, 6, requires_grad=True)
    for _ in range(2):
        with memory.packed():
            out = model(x).square().sum()
    with pytest.raises(RuntimeError, match="create_graph=True.*recompute"):
        torch.autograd.grad(out, x, create_graph=True)


# --- private torch APIs: fallback with one warning -------------------------------------------------------


def test_without_the_innermost_hook_api_units_keep_z_with_one_warning(monkeypatch):
    monkeypatch.delattr(torch._C._autograd, "_top_saved_tensors_default_hooks")
    monkeypatch.setattr(torch_private, "_WARNED", set())
    model = _convnet("soft_hinge")
    kept = []
    model[2].register_forward_hook(lambda m, i, out: kept.append(out.grad_fn.kept[0]))
    with pytest.warns(torch_private.PrivateAPIWarning, match="_top_saved_tensors_default_hooks") as caught:
        want = _first_order(copy.deepcopy(model), "exact")
        with memory.packed():
            model(X)
        got = _first_order(model, "packed")
    assert len([w for w in caught if issubclass(w.category, torch_private.PrivateAPIWarning)]) == 1
    assert kept[0] == "z (float32)"
    assert_grads_close(got, want, rtol=0.0)


def test_renamed_saved_attributes_fall_back_to_keeping_z_with_one_warning(monkeypatch):
    def renamed(node, name):
        raise AttributeError(f"'{type(node).__name__}' object has no attribute '_saved_{name}'")

    monkeypatch.setattr(torch_private, "saved_attribute", renamed)
    monkeypatch.setattr(torch_private, "_WARNED", set())
    model = _convnet("soft_hinge")
    with pytest.warns(torch_private.PrivateAPIWarning, match="_saved_") as caught:
        got = _first_order(copy.deepcopy(model), "packed")
    assert len(caught) == 1
    assert_grads_close(got, _first_order(copy.deepcopy(model), "exact"), rtol=0.0)


# --- the seam runs one way -------------------------------------------------------------------------------


def _imports(path: pathlib.Path):
    """``(module, names)`` for every import statement of a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_the_units_import_nothing_from_memory_and_nobody_imports_private_names_of_functional():
    package = ROOT / "lightning_ftprop"
    for unit_file in ("functional.py", "nn.py", "unit_state.py", "torch_private.py"):
        for module, names in _imports(package / unit_file):
            assert not module.startswith("lightning_ftprop.memory"), (unit_file, module)
            assert not (module == "lightning_ftprop" and "memory" in names), unit_file
    for module, _ in _imports(package / "unit_state.py"):  # the hook point: torch only
        assert module.split(".")[0] in {"__future__", "contextlib", "threading", "dataclasses", "typing", "torch"} or (
            module == "lightning_ftprop" or module == "lightning_ftprop.torch_private"
        ), module
    for path in package.rglob("*.py"):
        if path.name == "functional.py":
            continue
        text = path.read_text()
        for module, names in _imports(path):
            if module == "lightning_ftprop.functional":
                assert not [n for n in names if n.startswith("_")], (path, names)
        assert "F._" not in text and "functional._" not in text, path


def test_recognising_threshold_outputs_needs_no_private_name():
    h = ftp.functional.qrelu(torch.randn(4, requires_grad=True), thresholds=3)
    assert ftp.functional.output_kind(h.grad_fn) == ftp.kinds.QReLUKind(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(memory.pack(h), memory.PackedTensor)


def test_recompute_without_private_tensor_attributes_or_pytree_keeps_exact_gradients(monkeypatch):
    """Without Tensor._version/_base (fallback: no references) or torch.utils._pytree (a plain flattening),
    recompute still trains to the gradients of exact."""
    from lightning_ftprop.memory import calls

    want = _first_order(_convnet("soft_hinge"), "exact")
    monkeypatch.setattr(calls, "pytree", torch_private._Leaves)
    assert_grads_close(_first_order(_convnet("soft_hinge"), "recompute"), want, rtol=1e-5)
    monkeypatch.setattr(calls, "version", lambda t: None)
    monkeypatch.setattr(calls, "view_base", lambda t: None)
    assert_grads_close(_first_order(_convnet("soft_hinge"), "recompute"), want, rtol=1e-5)


def test_a_missing_tensor_attribute_warns_once_and_reads_as_none(monkeypatch):
    monkeypatch.setattr(torch_private, "_WARNED", set())

    class NoVersion:
        pass

    with pytest.warns(torch_private.PrivateAPIWarning, match="Tensor._version") as caught:
        assert torch_private.version(NoVersion()) is None
        assert torch_private.version(NoVersion()) is None
    assert len(caught) == 1
    leaves, spec = torch_private._Leaves.tree_flatten(((torch.ones(1), 2), {"k": [3, None]}))
    assert torch_private._Leaves.tree_unflatten(leaves, spec)[1] == {"k": [3, None]}
