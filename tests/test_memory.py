"""lightning_ftprop.memory: lossless packing, bitwise-identical packed gradients, exact recompute."""

from __future__ import annotations

import copy
import importlib
import math
import warnings

import pytest
import torch
import torchvision
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory
from lightning_ftprop.models import get_model

CALLS = importlib.import_module("lightning_ftprop.memory.calls")

UNITS = {  # label -> (activation, unit kwargs)
    "sign": ("sign", {}),
    "step": ("step", {}),
    "qrelu3": ("qrelu", {"thresholds": 3}),
    "qrelu5": ("qrelu", {"thresholds": 5}),
}
NETS = {"convnet4": (4, 3, 32, 32), "resnet18": (2, 3, 32, 32), "convnet8": (4, 3, 32, 32)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern, so -0.0 != +0.0 and NaN payloads count."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _step(model: nn.Module, x, y, mode: str, seed: int = 1):
    """One forward and backward; returns the gradients and the state (buffers included)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    if mode == "exact":
        loss = nn.functional.cross_entropy(model(x), y)
    else:
        with memory.packed():
            loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, {k: v.clone() for k, v in model.state_dict().items()}


def _net(arch: str, activation: str, rule: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return get_model(arch, activation=activation, rule=rule, num_classes=10, **kwargs)


def _batch(arch: str):
    shape = NETS[arch]
    g = torch.Generator().manual_seed(2)
    return torch.randn(*shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g)


# --- packing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1001])
def test_pack_bits_round_trips_every_code(bits, numel):
    codes = torch.randint(0, 2**bits, (numel,), dtype=torch.uint8)
    planes = memory.pack_bits(codes, bits)
    assert planes.dtype == torch.uint8 and planes.shape == (bits, math.ceil(numel / 8))
    assert torch.equal(memory.unpack_bits(planes, numel), codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("unit", list(UNITS))
def test_threshold_outputs_round_trip_bitwise_in_their_bits(unit, dtype):
    activation, kwargs = UNITS[unit]
    layer = ftp.make_unit(activation, "sste", **kwargs)
    z = (torch.randn(3, 5, 7, dtype=dtype) * 0.7).requires_grad_()  # odd sizes
    h = layer(z)
    saved = memory.pack(h)
    assert isinstance(saved, memory.PackedTensor), "a threshold output must be packed"
    assert saved.data.numel() == layer.bits * math.ceil(h.numel() / 8)
    back = memory.unpack(saved)
    assert back.dtype == dtype and back.shape == h.shape and back.stride() == h.stride()
    assert torch.equal(back, h.detach())
    if activation != "qrelu":  # qrelu may hold -0.0 (ceil of a small negative), which comes back as +0.0
        assert _bitwise_equal(back, h.detach())


@pytest.mark.parametrize("unit", list(UNITS))
def test_non_contiguous_and_pooled_threshold_outputs_keep_values_and_strides(unit):
    activation, kwargs = UNITS[unit]
    layer = ftp.make_unit(activation, "ste", **kwargs)
    z = torch.randn(2, 3, 9, 11, requires_grad=True)
    h = layer(z)
    views = {
        "transposed": h.transpose(2, 3),
        "channels_last": layer(z.contiguous(memory_format=torch.channels_last)),
        "pooled": nn.functional.max_pool2d(h, 2),
        "flattened": h.flatten(1),
        "selected": h[1],
    }
    for name, view in views.items():
        saved = memory.pack(view)
        assert isinstance(saved, memory.PackedTensor), name
        back = memory.unpack(saved)
        assert back.stride() == view.stride() and torch.equal(back, view.detach()), name
    gapped = h[:, 1]  # not dense: its strides skip elements; kept as it is rather than re-laid out
    assert memory.pack(gapped) is gapped


def test_masks_and_indices_pack_losslessly_and_floats_pass_through():
    mask = torch.rand(5, 13) > 0.5
    packed_mask = memory.pack(mask)
    assert packed_mask.data.numel() == math.ceil(65 / 8)
    assert torch.equal(memory.unpack(packed_mask), mask)
    indices = torch.randint(0, 1000, (4, 300))
    packed_indices = memory.pack(indices)
    assert packed_indices.data.dtype == torch.int16
    back = memory.unpack(packed_indices)
    assert back.dtype == torch.int64 and torch.equal(back, indices)
    float_tensor = torch.randn(4, 4, requires_grad=True) * 2  # not a threshold output
    assert memory.pack(float_tensor) is float_tensor
    z = torch.tensor([0.5, float("nan"), -0.5] * 4, requires_grad=True)
    for unit in (ftp.Sign(), ftp.QReLU(thresholds=5)):
        with_nan = unit(z)  # NaN in, NaN out: no code can store it, so the tensor is kept as it is
        assert memory.pack(with_nan) is with_nan


def test_pack_and_unpack_compile_with_fullgraph():
    codes = torch.randint(0, 8, (1001,), dtype=torch.uint8)

    def round_trip(c):
        return memory.unpack_bits(memory.pack_bits(c, 3), c.numel())

    compiled = torch.compile(round_trip, fullgraph=True, backend="eager")
    assert torch.equal(compiled(codes), codes)


# --- packed(): bitwise-identical gradients -----------------------------------------------------------


def _mlp(activation: str, rule: str, **kwargs) -> nn.Module:
    """A BN-free MLP: every unit's z comes from a matmul, so every unit that reads z keeps it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    ftp.convert(model, activation, rule, **kwargs)
    return model


@pytest.mark.parametrize("rule", ftp.available_rules())
@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("arch", ["convnet4", "resnet18", "mlp"])
def test_packed_gradients_are_bitwise_identical(arch, unit, rule):
    """Every rule: z rebuilt from BatchNorm / max-pool / a residual sum, a 1-bit mask, or kept."""
    activation, kwargs = UNITS[unit]
    if arch == "mlp":
        model = _mlp(activation, rule, **kwargs)
        g = torch.Generator().manual_seed(2)
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    else:
        model = _net(arch, activation, rule, **kwargs)
        x, y = _batch(arch)
    twin = copy.deepcopy(model)
    exact_grads, exact_state = _step(model, x, y, "exact")
    packed_grads, packed_state = _step(twin, x, y, "packed")
    for name in exact_grads:
        assert _bitwise_equal(packed_grads[name], exact_grads[name]), name
    for name in exact_state:
        assert torch.equal(packed_state[name], exact_state[name]), name


def test_packed_keeps_bits_not_floats_for_the_saved_threshold_outputs(monkeypatch):
    """What packed() stores: every saved threshold output as bits; the units keep nothing or a 1-bit mask."""
    model = _net("convnet4", "sign", "sste")
    x, y = _batch("convnet4")
    kinds, kept = [], []
    real_pack = memory.hooks.pack

    def spy(t):
        saved = real_pack(t)
        kinds.append(saved.form if isinstance(saved, memory.PackedTensor) else str(t.dtype))
        return saved

    monkeypatch.setattr(memory.hooks, "pack", spy)  # packed() installs hooks.pack as it finds it
    for unit in model.modules():
        if isinstance(unit, ftp.ThresholdUnit):
            unit.register_forward_hook(lambda m, i, out: kept.append(out.grad_fn.kept[0]))
    with memory.packed():
        nn.functional.cross_entropy(model(x), y).backward()
    # conv -> pool -> unit twice: z is rebuilt from the pool's input; linear -> unit: sste's 1-bit mask
    assert kept == ["nothing", "nothing", "1-bit mask"]
    assert kinds.count("torch.uint8") == 1  # the mask, already packed by the unit
    assert kinds.count("unit") == 3  # the inputs of conv2, fc1 and fc2
    assert "torch.float32" in kinds  # the conv outputs that max-pool keeps


def test_model_without_threshold_units_is_unchanged_under_packed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    twin = copy.deepcopy(model)
    x, y = _batch("convnet4")
    seen = []

    def spy(t):
        saved = memory.pack(t)
        seen.append(saved is t or t.dtype != torch.float32)
        return saved

    exact_grads, exact_state = _step(model, x, y, "exact")
    with torch.autograd.graph.saved_tensors_hooks(spy, memory.unpack):
        nn.functional.cross_entropy(copy.deepcopy(model)(x), y)
    assert seen and all(seen)  # no float tensor is touched
    packed_grads, packed_state = _step(twin, x, y, "packed")
    for name in exact_grads:
        assert _bitwise_equal(packed_grads[name], exact_grads[name]), name
    for name in exact_state:
        assert torch.equal(packed_state[name], exact_state[name]), name


# --- recompute ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ftp.available_rules())
@pytest.mark.parametrize(
    "arch, activation, kwargs",
    [("convnet8", "sign", {}), ("resnet18", "qrelu", {"thresholds": 5}), ("convnet4", "step", {})],
)
def test_recompute_matches_exact_for_every_rule(arch, activation, kwargs, rule):
    """convnet8 has BN and dropout: running statistics and the dropout mask must match exact mode."""
    model = _net(arch, activation, rule, **kwargs)
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memory.recompute(twin)
    x, y = _batch(arch)
    exact_grads, exact_state = _step(model, x, y, "exact")
    recomputed_grads, recomputed_state = _step(twin, x, y, "packed")
    for name in exact_grads:
        torch.testing.assert_close(recomputed_grads[name], exact_grads[name], rtol=1e-5, atol=1e-7)
    for name in exact_state:  # BN running statistics are updated once, not twice
        assert torch.equal(recomputed_state[name], exact_state[name]), name


def test_recompute_covers_the_resnet_stem_and_names_what_it_cannot_cover():
    model = _net("resnet18", "sign", "soft_hinge")
    names = memory.recompute(model)
    assert names[:3] == ["relu", "layer1.0.relu", "layer1.1.relu"]  # every unit, the stem's included
    x, y = _batch("resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stem and the blocks are covered: no warning
        for _ in range(2):
            _step(model, x, y, "packed")

    class Scaled(nn.Module):  # z = 2 * linear(x): made by a python op, in a module whose output is float
        def __init__(self):
            super().__init__()
            self.lin, self.act, self.out = nn.Linear(4, 4), ftp.Sign(rule="soft_hinge"), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(self.act(self.lin(x) * 2))

    odd = Scaled()
    assert memory.recompute(odd) == ["act"]
    with pytest.warns(UserWarning, match=r"1 threshold unit\(s\) keep their float input z.*: act$") as record:
        for _ in range(2):  # named once, after the first forward
            _step(odd, torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]), "packed")
    assert len(record) == 1


def test_recompute_is_undone_and_keeps_state_dict_keys():
    model = _net("convnet4", "sign", "soft_hinge")
    keys = list(model.state_dict())
    x, _ = _batch("convnet4")
    expected = model(x)
    memory.recompute(model)
    assert "forward" in model.__dict__ and list(model.state_dict()) == keys
    assert torch.equal(model(x), expected)
    assert memory.recompute(model, enable=False) == []
    assert "forward" not in model.__dict__ and memory._SEGMENTS not in model.__dict__
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_recompute_keeps_only_bits_references_and_the_image(monkeypatch):
    """Under recompute the forward keeps the image, bits, references to module calls and small tensors."""
    model = _net("convnet4", "sign", "soft_hinge")  # soft_hinge keeps float z without recompute
    memory.recompute(model)
    x, y = _batch("convnet4")
    kept = []

    def spy(keep):
        def wrapped(*args):
            stored = keep(*args)
            kept.append(stored)
            return stored

        return wrapped

    monkeypatch.setattr(CALLS, "store", spy(CALLS.store))
    monkeypatch.setattr(CALLS._Saver, "__call__", spy(CALLS._Saver.__call__))
    logits = model(x)
    floats = [t for t in kept if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > logits.numel()]
    params = {id(p) for p in model.parameters()}
    assert floats and all(t is x or id(t if t._base is None else t._base) in params for t in floats)
    kinds = {type(t).__name__ for t in kept}
    assert {"PackedTensor", "_Ref"} <= kinds  # bits (conv inputs) and references (BN/pool inputs, z, indices)
    nn.functional.cross_entropy(logits, y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_recompute_works_on_a_third_party_model():
    """torchvision's MobileNetV2: nested Sequentials, inverted residual blocks, ReLU6 -> sign."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.35)
    ftp.convert(model, "sign", "soft_hinge")
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert memory.recompute(twin)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    exact_grads, exact_state = _step(model, x, y, "exact")
    recomputed_grads, recomputed_state = _step(twin, x, y, "packed")
    for name in exact_grads:
        torch.testing.assert_close(recomputed_grads[name], exact_grads[name], rtol=1e-5, atol=1e-7)
    for name in exact_state:
        assert torch.equal(recomputed_state[name], exact_state[name]), name


def test_recompute_refuses_a_model_without_threshold_units():
    with pytest.raises(ValueError, match="no threshold unit"):
        memory.recompute(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        memory.recompute("model")


@pytest.mark.parametrize(
    "bad, error", [("fast", ValueError), ("Packed", ValueError), ("", ValueError), (None, TypeError), (1, TypeError)]
)
def test_bad_memory_values_raise_listing_the_valid_ones(bad, error):
    from lightning_ftprop.spec import make_spec

    for build in (memory.check_memory, memory.MemoryMode, lambda m: make_spec(memory=m)):
        with pytest.raises(error, match="exact, packed, recompute"):
            build(bad)
