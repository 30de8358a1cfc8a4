"""recompute on models as people write them: unmodified torchvision, timm and Hugging Face models.

Each model is converted, copied, and trained for two steps (the first one finds the segments, the
second runs them) with ``memory="exact"`` and with ``recompute`` + ``packed()``. The gradients must be
equal within ``rtol=1e-5, atol=1e-7`` (float reassociation; on the CPU they come out bitwise equal) and
the state (BatchNorm running statistics) exactly equal; dropout is on where the model has it.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

RULES = ["sste", "soft_hinge"]
SEQ, VOCAB = 8, 64


def _images(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([1, 7])
    return nn.functional.cross_entropy(model(x), y)


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))


def _step(model: nn.Module, loss_of, packed: bool):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both runs
    with memory.packed() if packed else torch.enable_grad():
        loss = loss_of(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_recompute_is_exact(model: nn.Module, loss_of) -> None:
    model.train()
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every unit is covered: no warning
        assert memory.recompute(twin)
        for _ in range(2):
            exact_grads, exact_state = _step(model, loss_of, packed=False)
            grads, state = _step(twin, loss_of, packed=True)
            assert grads.keys() == exact_grads.keys()
            for name in exact_grads:
                torch.testing.assert_close(grads[name], exact_grads[name], rtol=1e-5, atol=1e-7)
            for name in exact_state:
                assert torch.equal(state[name], exact_state[name]), name


@pytest.mark.parametrize("rule", RULES)
def test_recompute_gradients_equal_exact_on_unmodified_torchvision_resnet18(rule):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    ftp.convert(model, "sign", rule)
    _assert_recompute_is_exact(model, _images)


@pytest.mark.parametrize("rule", RULES)
def test_recompute_gradients_equal_exact_on_unmodified_timm_resnet18(rule):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    ftp.convert(model, "sign", rule)
    _assert_recompute_is_exact(model, _images)


@pytest.mark.parametrize("rule", RULES)
def test_recompute_gradients_equal_exact_on_mobilenet_v3(rule):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)  # hardswish, squeeze-excitation, dropout
    ftp.convert(model, "sign", rule)
    _assert_recompute_is_exact(model, _images)


@pytest.mark.parametrize("rule", RULES)
def test_recompute_gradients_equal_exact_on_transformer_encoder_layer(rule):
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
    ftp.convert(model, "sign", rule)
    x = torch.randn(2, SEQ, 32, generator=torch.Generator().manual_seed(3))
    _assert_recompute_is_exact(model, lambda m: m(x).square().mean())


@pytest.mark.parametrize("rule", RULES)
def test_recompute_gradients_equal_exact_on_bert(rule):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, intermediate_size=48, num_hidden_layers=2,
        max_position_embeddings=SEQ, num_labels=2,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    ftp.convert(model, "sign", rule)
    ids = _tokens()
    _assert_recompute_is_exact(model, lambda m: m(input_ids=ids, labels=torch.tensor([0, 1])).loss)


@pytest.mark.parametrize("rule", RULES)
def test_recompute_gradients_equal_exact_on_gpt2(rule):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_inner=48, n_positions=SEQ)
    model = transformers.GPT2LMHeadModel(config)
    ftp.convert(model, "sign", rule)
    ids = _tokens()
    _assert_recompute_is_exact(model, lambda m: m(input_ids=ids, labels=ids).loss)


def test_recompute_reruns_a_float_in_place_relu_on_a_copy():
    """A ReLU(inplace=True) left in float changes its input: its re-run must not change the cached input."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(8, 8),
        ftp.Sign(rule="soft_hinge"), nn.Linear(8, 3),
    )  # fmt: skip
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))
    _assert_recompute_is_exact(model, lambda m: nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 0, 1])))


def test_recompute_docstring_examples_run():
    import doctest
    import importlib

    module = importlib.import_module("lightning_ftprop.memory.recompute")
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried and not failures


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_recompute_keeps_the_hf_mlp_activation_in_bits_and_its_z_as_a_reference(arch, monkeypatch):
    """The MLP's z (its first linear's output) is a reference, the activation that the second linear keeps is bits."""
    import importlib

    calls = importlib.import_module("lightning_ftprop.memory.calls")
    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, intermediate_size=48, num_hidden_layers=2,
            max_position_embeddings=SEQ,
        )  # fmt: skip
        model, second = transformers.BertModel(config), "output.dense"
    else:
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_inner=48, n_positions=SEQ)
        model, second = transformers.GPT2Model(config), "mlp.c_proj"
    ftp.convert(model, "sign", "soft_hinge")
    memory.recompute(model)
    names = {id(m): n for n, m in model.named_modules()}
    stored = []
    real = calls._Saver.__call__

    def spy(saver, x):
        kept = real(saver, x)
        stored.append((names[id(saver.record.module)], type(kept).__name__))
        return kept

    monkeypatch.setattr(calls._Saver, "__call__", spy)
    with memory.packed():
        model(input_ids=_tokens()).last_hidden_state.sum().backward()
    units = [kind for name, kind in stored if isinstance(model.get_submodule(name), ftp.ThresholdUnit)]
    assert len(units) >= 2 and set(units) == {"_Ref"}  # each z: a reference to the linear call that made it
    inputs = [kind for name, kind in stored if name.endswith(second) and kind != "Parameter"]
    assert "PackedTensor" in inputs  # the second linear's input: the activation, in bits


def test_a_recomputing_model_survives_torch_save_and_deepcopy(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    ftp.convert(model, "sign", "soft_hinge")
    memory.recompute(model)
    _images(model).backward()  # the blocks are found: the copies carry them
    path = tmp_path / "model.pt"
    torch.save(model, path)
    for copied in (copy.deepcopy(model), torch.load(path, weights_only=False)):
        assert copied.layer1[0].forward.module is copied.layer1[0]  # bound to the copy, not the original
        assert copied.layer1[0].__dict__[memory._SEGMENTS].segment  # what the first forward found
        plain = copy.deepcopy(copied)
        memory.recompute(plain, enable=False)
        exact_grads, _ = _step(plain, _images, packed=False)
        grads, _ = _step(copied, _images, packed=True)
        for name in exact_grads:
            torch.testing.assert_close(grads[name], exact_grads[name], rtol=1e-5, atol=1e-7)
