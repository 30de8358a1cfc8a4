"""packed() for every rule: z rebuilt from what autograd keeps, the unit-state protocol, summary, DDP.

Gradients under ``packed()`` are compared with plain autograd bit for bit (``-0.0 != +0.0``).
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from lightning_helpers import run_ddp_script
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory, unit_state
from lightning_ftprop.memory import codec, policy
from lightning_ftprop.models import get_model
from lightning_ftprop.summary import summary

UNITS = {
    "sign": ("sign", {}),
    "step": ("step", {}),
    "qrelu3": ("qrelu", {"thresholds": 3}),
    "qrelu5": ("qrelu", {"thresholds": 5}),
}
RULES = ftp.available_rules()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def _grads(model: nn.Module, loss_fn, packed: bool):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout draws the same masks in both modes
    if packed:
        with memory.packed():
            loss = loss_fn(model)
    else:
        loss = loss_fn(model)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_packed_equals_exact(model: nn.Module, loss_fn) -> None:
    twin = copy.deepcopy(model)
    exact, packed = _grads(model, loss_fn, False), _grads(twin, loss_fn, True)
    assert exact.keys() == packed.keys()
    for name in exact:
        assert torch.equal(_bits(packed[name]), _bits(exact[name])), name
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


def _kept(model: nn.Module, run) -> list:
    """What each unit kept for its backward in ``run()`` (its ``grad_fn.kept``), in call order."""
    kept = []
    handles = [
        m.register_forward_hook(lambda m, i, out: kept.append(out.grad_fn.kept))
        for m in model.modules()
        if isinstance(m, ftp.ThresholdUnit)
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return kept


# --- Hugging Face models (small configs, offline) ---------------------------------------------------

VOCAB, SEQ = 64, 8


def _bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=48,
        num_hidden_layers=2,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_inner=48, n_positions=SEQ)
    return transformers.GPT2LMHeadModel(config)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_packed_equals_exact_on_hugging_face_models(name, unit, rule):
    torch.manual_seed(0)
    model = {"bert": _bert, "gpt2": _gpt2}[name]().train()
    activation, kwargs = UNITS[unit]
    ftp.convert(model, activation, rule, **kwargs)
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(3))
    labels = ids[:, 0] % 2 if name == "bert" else ids
    _assert_packed_equals_exact(model, lambda m: m(input_ids=ids, labels=labels).loss)


# --- what the units keep ----------------------------------------------------------------------------


def _conv_bn_unit(rule: str = "soft_hinge") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), ftp.Sign(rule), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)
    )


def _loss(x, y):
    return lambda m: nn.functional.cross_entropy(m(x), y)


X, Y = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("rule", ["soft_hinge", "hinge", "log_loss", "sste"])
def test_a_unit_after_batchnorm_keeps_nothing_and_its_gradients_are_exact(rule):
    model = _conv_bn_unit(rule)
    with memory.packed():
        (kept,) = _kept(model, lambda: model(X))
    assert kept == ("nothing", "z is rebuilt from BatchNorm in the backward")
    _assert_packed_equals_exact(model, _loss(X, Y))


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda m: m[1].bias.requires_grad_(False), "z comes from NativeBatchNormBackward0"),  # bias unreachable
        (lambda m: m[1].eval(), "z comes from NativeBatchNormBackward0"),  # running statistics
    ],
    ids=["frozen-bias", "eval-batchnorm"],
)
def test_z_that_cannot_be_rebuilt_is_kept_and_the_gradients_stay_exact(change, why):
    model = _conv_bn_unit()
    change(model)
    with memory.packed():
        (kept,) = _kept(model, lambda: model(X))
    assert kept[0] == "z (float32)" and kept[1].startswith(why)
    _assert_packed_equals_exact(model, _loss(X, Y))


def test_units_keep_z_inside_other_saved_tensor_hooks():
    """Hooks nested inside packed() receive what the unit saves: the unit keeps z for them."""
    model = _conv_bn_unit()
    with memory.packed(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        (kept,) = _kept(model, lambda: model(X))
    assert kept[0] == "z (float32)"
    with memory.packed():
        with torch.autograd.graph.save_on_cpu():
            loss = _loss(X, Y)(model)
        loss.backward()  # runs


def test_the_unit_state_policy_is_thread_local():
    seen = {}

    def other_thread():
        seen["policy"] = unit_state.active_policy()
        seen["recomputing"] = unit_state.recomputing()
        seen["kept"] = ftp.functional.sign(torch.randn(3, requires_grad=True) * 1, "soft_hinge").grad_fn.kept

    with memory.packed(), unit_state.recomputation():
        assert unit_state.active_policy() is policy.packed_state and unit_state.recomputing()
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert seen == {"policy": None, "recomputing": False, "kept": ("z (float32)", "soft_hinge's backward reads z")}
    assert unit_state.active_policy() is None


def test_residual_blocks_rebuild_z_from_batchnorm_and_the_packed_identity():
    torch.manual_seed(0)
    model = get_model("resnet18", activation="sign", rule="soft_hinge", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with memory.packed():
        kept = _kept(model, lambda: model(x))
    whys = {why for _, why in kept}
    assert {what for what, _ in kept} == {"nothing"}
    assert "z is rebuilt from BatchNorm + packed threshold output in the backward" in whys
    assert "z is rebuilt from BatchNorm + BatchNorm in the backward" in whys  # the downsampling blocks


def test_summary_says_which_units_keep_float_state_and_why():
    torch.manual_seed(0)
    model = get_model("convnet4", activation="sign", rule="soft_hinge", num_classes=10)
    before = copy.deepcopy(model.state_dict())
    found = summary(model, torch.randn(2, 3, 32, 32))
    assert [layer.kept for layer in found.layers] == ["nothing", "nothing", "z (float32)"]
    assert [layer.keeps_float for layer in found.layers] == [False, False, True]
    assert "matmul" in found.layers[2].kept_why
    text = str(found)
    assert "training keeps (packed)" in text and "float state in training (memory='packed'): 1 unit: 8 (z comes" in text
    for name, value in model.state_dict().items():  # the training-mode forward left no trace
        assert torch.equal(value, before[name]), name


# --- the codec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 64, 1001])
def test_numpy_and_torch_packing_write_the_same_bytes(numel, monkeypatch):
    g = torch.Generator().manual_seed(numel)
    values = torch.randn(numel + 3, generator=g)[3:]  # an offset view
    bools = torch.rand(numel, generator=g) > 0.5
    fast = codec.pack_positive(values), codec.pack_bools(bools)
    monkeypatch.setattr(codec, "_numpy_path", lambda x: False)
    slow = codec.pack_positive(values), codec.pack_bools(bools)
    for a, b in zip(fast, slow):
        assert a.dtype == torch.uint8 and torch.equal(a, b)
    assert torch.equal(codec.lookup(slow[1], codec._table((0, 1), torch.uint8, bools.device), numel).bool(), bools)


def test_unpack_of_the_first_samples_matches_the_whole():
    z = torch.randn(5, 3, 4, 6, requires_grad=True)
    for h in (
        ftp.functional.sign(z),
        ftp.functional.qrelu(z.contiguous(memory_format=torch.channels_last), thresholds=5),
    ):
        saved = memory.pack(h)
        assert isinstance(saved, memory.PackedTensor)
        assert torch.equal(memory.unpack(saved, samples=2), h.detach()[:2])


# --- names -------------------------------------------------------------------------------------------


def test_memory_mode_needs_its_mode_named():
    with pytest.raises(TypeError):
        memory.MemoryMode()
    assert memory.MemoryMode(memory.DEFAULT_MEMORY).memory == "packed"


# --- DDP ---------------------------------------------------------------------------------------------


@pytest.mark.ddp
def test_ddp_with_the_default_settings_trains_to_the_parameters_of_exact(tmp_path):
    run_ddp_script("ddp_memory_script.py", tmp_path, "default:exact", "default:default")
    runs = {
        m: [json.loads((tmp_path / f"default-{m}-rank{r}.json").read_text()) for r in (0, 1)]
        for m in ("exact", "default")
    }
    assert [r["memory"] for r in runs["default"]] == [memory.DEFAULT_MEMORY] * 2
    assert [r["rule"] for r in runs["default"]] == ["soft_hinge"] * 2
    reference = runs["exact"][0]
    for run in runs["exact"][1:] + runs["default"]:
        assert run["params"] == reference["params"]
    for exact, default in zip(runs["exact"], runs["default"]):  # BatchNorm statistics are each rank's own
        assert default["buffers"] == exact["buffers"]
