"""Real Hugging Face models, built from small configs offline (no weights are downloaded).

BERT (GELUActivation), GPT-2 (NewGELUActivation) and Llama (a SiLU MLP): every MLP activation is
swapped, three steps of ``Trainer.fit`` under ``FTPropCallback`` log ``ftprop/*`` keys, and ``revert``
brings back the very same modules. ``transformers`` is a test dependency only.
"""

import csv
import glob
import warnings

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger
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
