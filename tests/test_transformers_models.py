"""Real Hugging Face models, built from small configs offline (no weights are downloaded).

BERT (GELUActivation), GPT-2 (NewGELUActivation) and Llama (a SiLU MLP): every MLP activation is
swapped, three steps of ``Trainer.fit`` under ``FTPropCallback`` log ``ftprop/*`` keys, and ``revert``
brings back the very same modules. ``transformers`` is a test dependency only.
"""

import ast
import csv
import glob
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_ftprop as ftp
from tests.lightning_helpers import make_trainer

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 64, 8
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, intermediate_size=48)


def bert():
    config = transformers.BertConfig(**SMALL, num_hidden_layers=2, max_position_embeddings=SEQ, num_labels=2)
    return transformers.BertForSequenceClassification(config), "bert.encoder.layer.{}.intermediate.intermediate_act_fn"


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_inner=48, n_positions=SEQ)
    return transformers.GPT2LMHeadModel(config), "transformer.h.{}.mlp.act"


def llama():
    config = transformers.LlamaConfig(**SMALL, num_hidden_layers=2, num_key_value_heads=1, max_position_embeddings=SEQ)
    return transformers.LlamaForCausalLM(config), "model.layers.{}.mlp.act_fn"


def bloom():
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=2)
    return transformers.BloomForCausalLM(config), "transformer.h.{}.mlp.gelu_impl"  # BloomGelu, its own class


MODELS = {"bert": bert, "gpt2": gpt2, "llama": llama, "bloom": bloom}


class LanguageModel(LightningModule):
    """Any Hugging Face model that returns ``.loss`` when given labels."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.classify = isinstance(model, transformers.BertForSequenceClassification)

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        labels = (ids[:, 0] % 2) if self.classify else ids
        return self.model(input_ids=ids, labels=labels).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def token_loader():
    ids = torch.randint(0, VOCAB, (12, SEQ), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(ids), batch_size=4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_mlp_activation_is_swapped_and_revert_restores_the_originals(name):
    torch.manual_seed(0)
    model, pattern = MODELS[name]()
    model.eval()
    mlp = [pattern.format(i) for i in range(2)]
    originals = {n: m for n, m in model.named_modules() if n in mlp}
    ids = next(iter(token_loader()))[0]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error", ftp.UnswappedActivationWarning)  # nothing is left in float
        swapped = ftp.convert(model, "sign", "sste")
    assert set(mlp) <= set(swapped) and swapped.left == []
    assert all(isinstance(model.get_submodule(n), ftp.Sign) for n in mlp)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, before)
    assert set(ftp.revert(model)) == set(swapped)
    assert all(model.get_submodule(n) is m for n, m in originals.items())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_three_steps_under_the_callback_log_ftprop_keys(name, tmp_path):
    torch.manual_seed(0)
    model, pattern = MODELS[name]()
    module = LanguageModel(model)
    callback = ftp.FTPropCallback("sign", "soft_hinge", log_every_n_steps=1)
    logger = CSVLogger(tmp_path)
    make_trainer(callbacks=[callback], logger=logger, max_steps=3).fit(module, token_loader())
    mlp = [f"model.{pattern.format(i)}" for i in range(2)]
    assert set(mlp) <= set(callback.layers)
    assert callback.counts["swapped"] == len(callback.layers) and callback.counts["left"] == 0
    (path,) = glob.glob(str(tmp_path / "**" / "metrics.csv"), recursive=True)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    keys = {k for row in rows for k, v in row.items() if k.startswith("ftprop/") and v != ""}
    assert {f"ftprop/{ftp.diagnostics.layer_key(n)}/mismatch" for n in mlp} <= keys
    assert sorted({int(row["step"]) for row in rows}) == [0, 1, 2]
    with open(glob.glob(str(tmp_path / "**" / "hparams.yaml"), recursive=True)[0]) as f:
        hparams = yaml.safe_load(f)
    assert hparams["ftprop/swapped"] == len(callback.layers) and hparams["ftprop/left"] == 0


# --- every activation class the installed transformers defines ---------------------------------------

#: Activation-like classes of transformers' modeling modules that are not a hidden unit's nonlinearity to swap,
#: each with why. The test below fails on any other class it finds that the recognisers do not know.
OUT_OF_SCOPE = {
    "transformers.models.bit.modeling_bit.BitGroupNormActivation": "a GroupNorm (weights) that calls its "
    "activation submodule, which is recognised and swapped",
    "transformers.models.inkling2.modeling_inkling2.Inkling2Softcap": "soft-capping c*tanh(x/c) of a gate "
    "inside a two-input gated unit, not a unit of its own",
    "transformers.models.inkling2_loop.modeling_inkling2_loop.Inkling2LoopSoftcap": "as Inkling2Softcap",
    "transformers.models.neucodec.modeling_neucodec.NeuCodecAntiAliasedActivation1d": "up-sampling filter, a "
    "learnable Snake activation (parameters alpha, beta) and down-sampling filter around it",
    "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni.Qwen2_5OmniAntiAliasedActivation1d": "as "
    "NeuCodecAntiAliasedActivation1d",
    "transformers.models.qwen2_5_omni.modeling_qwen2_5_omni.Activation1d": "a subclass of "
    "Qwen2_5OmniAntiAliasedActivation1d",
    "transformers.models.xcodec2.modeling_xcodec2.Xcodec2AntiAliasedActivation1d": "as NeuCodecAntiAliasedActivation1d",
}

_ACTIVATION_NAME = re.compile(r"(?i)(gelu|silu|swish|relu|mish|activation|sigmoid|tanh|softplus|softcap|glu$|act$)")
_CALL = re.compile(r"(\w+)\(")


def _builds_weights(source: str) -> bool:
    """Whether ``__init__``'s source calls a layer with weights (Linear, Conv*, *Norm*, Embedding, Parameter)."""
    return any(
        name in ("Linear", "Parameter", "Embedding") or name.startswith("Conv") or "Norm" in name
        for name in _CALL.findall(source)
    )


def _activation_classes(package) -> list:
    """``(class path, source file)`` of every activation-like ``nn.Module`` in ``package``'s modeling modules.

    Read from the source (no import): a class whose name says activation (gelu, silu, act, ...), whose
    ``forward`` (if it defines one) takes one input and whose ``__init__`` builds no weights; or a subclass of
    such a class.
    """
    found, names = [], set()
    for path in sorted((Path(package.__file__).parent / "models").glob("*/modeling_*.py")):
        if path.name.startswith(("modeling_tf_", "modeling_flax_")):
            continue
        source = path.read_text()
        module = f"transformers.models.{path.parent.name}.{path.stem}"
        for node in ast.parse(source).body:
            if not isinstance(node, ast.ClassDef) or "torch.autograd.Function" in map(ast.unparse, node.bases):
                continue
            subclass = any(ast.unparse(b) in names for b in node.bases)
            if not subclass and not _ACTIVATION_NAME.search(node.name):
                continue
            methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
            forward, init = methods.get("forward"), methods.get("__init__")
            one_input = forward is not None and len(forward.args.args) == 2
            weights = init is not None and _builds_weights(ast.get_source_segment(source, init) or "")
            if subclass or (one_input and not weights):
                found.append(f"{module}.{node.name}")
                names.add(node.name)
    return found


@pytest.mark.slow
def test_every_activation_class_of_the_transformers_modeling_modules_is_recognised_or_out_of_scope():
    transformers = pytest.importorskip("transformers")
    found = _activation_classes(transformers)
    registered = set(ftp.registered_activations())
    unknown = [path for path in found if path not in registered and path not in OUT_OF_SCOPE]
    assert "transformers.models.bloom.modeling_bloom.BloomGelu" in found  # the scan sees what it should
    assert not unknown, f"activation classes neither recognised nor listed out of scope: {unknown}"


def test_lxmert_gelu_is_swapped_and_reverted():
    from transformers.models.lxmert.modeling_lxmert import GeLU

    model = nn.Sequential(nn.Linear(4, 4), GeLU(), nn.Linear(4, 2))
    assert ftp.convert(model, "sign") == ["1"]
    assert isinstance(model[1], ftp.Sign)
    ftp.revert(model)
    assert isinstance(model[1], GeLU)
