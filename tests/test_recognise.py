"""Which modules convert swaps: the recogniser registry, function-valued activations, the warning
about activations left in float, and one validator for every way in (convert, callback, mixin)."""

import logging
import subprocess
import sys
import warnings
from typing import Optional

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.demos import LightningTransformer, WikiText2
from torch import nn
from torch.nn import functional as F

import lightning_ftprop as ftp
from lightning_ftprop.recognise import class_path, unregister_activation
from tests.lightning_helpers import make_trainer


class Squash(nn.Module):
    """An activation no recogniser knows; its name reads like one only through ``Act`` below."""

    def forward(self, x):
        return x / (1 + x.abs())


class SquashAct(Squash):
    pass


def squash_net():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), SquashAct(), nn.Linear(8, 2))


def test_building_the_registry_imports_no_optional_library():
    # recognise.py is loaded on its own: the package's __init__ pulls in torchmetrics, which imports
    # transformers itself when it is installed
    path = ftp.recognise.__file__
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('recognise', {path!r})\n"
        "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
        "keys = r.registered_activations()\n"
        "assert any(k.startswith('transformers.') for k in keys) and any(k.startswith('timm.') for k in keys)\n"
        "print(sorted(m for m in ('transformers', 'timm', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["type", "path", "predicate"])
def test_a_registered_recogniser_gets_the_module_swapped(kind):
    recogniser = {
        "type": SquashAct,
        "path": f"{SquashAct.__module__}.SquashAct",
        "predicate": lambda m: isinstance(m, Squash),
    }[kind]
    key = ftp.register_activation(recogniser, name="squashes" if kind == "predicate" else None)
    try:
        model = squash_net()
        original = model[3]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing is left, so no warning
            swapped = ftp.convert(model, "step")
        assert swapped == ["1", "3"] and isinstance(model[3], ftp.Step)
        assert ftp.match_activation(original) == key
        ftp.revert(model)
        assert model[3] is original
    finally:
        unregister_activation(key)
    assert ftp.match_activation(original) is None


def test_an_unknown_activation_like_module_gets_one_warning_naming_it():
    model = nn.Sequential(squash_net(), SquashAct())  # two of them, one class
    with pytest.warns(ftp.UnswappedActivationWarning) as record:
        swapped = ftp.convert(model, "sign")
    assert len(record) == 1
    message = str(record[0].message)
    path = f"{SquashAct.__module__}.SquashAct"
    assert f"{path}: 1, 0.3" in message  # parents first: root, then its submodules
    assert "register_activation" in message and "exclude" in message
    assert swapped == ["0.1"] and swapped.left == ["1", "0.3"] and swapped.excluded == []
    # summary() shows what stayed float
    text = str(ftp.summary(model, torch.randn(2, 4)))
    assert f"left in float: 2 activations: 0.3 ({path}), 1 ({path})" in text


def test_activations_the_user_kept_in_float_are_excluded_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swapped = ftp.convert(squash_net(), "sign", exclude="3")
        assert swapped.counts() == {"swapped": 1, "excluded": 1, "left": 0}
        model = nn.Sequential(nn.ReLU(), nn.Tanh())
        swapped = ftp.convert(model, mapping={"ReLU": "sign", "Tanh": None})
        assert swapped == ["0"] and swapped.excluded == ["1"] and isinstance(model[1], nn.Tanh)
        table = ftp.summary(model, torch.randn(2, 3))
        assert table.left_in_float == [("1", "torch.nn.modules.activation.Tanh")]
    # a mapping that simply omits a class is not a choice: that GELU is reported
    with pytest.warns(ftp.UnswappedActivationWarning, match="torch.nn.modules.activation.GELU: 1"):
        ftp.convert(nn.Sequential(nn.ReLU(), nn.GELU()), mapping={"ReLU": "sign"})


def test_reconverting_with_an_exclusion_puts_that_original_back():
    model = squash_net()
    relu = model[1]
    ftp.register_activation(SquashAct)
    try:
        ftp.convert(model)
        assert ftp.convert(model, exclude="1") == ["3"]
    finally:
        unregister_activation(SquashAct)
    assert model[1] is relu


def test_transformer_function_activations_are_swapped_trained_and_restored():
    torch.manual_seed(0)
    model = nn.Transformer(
        d_model=16,
        nhead=2,
        num_encoder_layers=2,
        num_decoder_layers=1,
        dim_feedforward=32,
        activation="gelu",
        batch_first=True,
    )
    layers = [*model.encoder.layers, *model.decoder.layers]
    assert all(layer.activation is F.gelu for layer in layers)
    src, tgt = torch.randn(3, 5, 16), torch.randn(3, 4, 16)
    model.eval()
    with torch.no_grad():
        before = model(src, tgt)
    swapped = ftp.convert(model, "sign", "sste")
    assert swapped == [f"encoder.layers.{i}.activation" for i in (0, 1)] + ["decoder.layers.0.activation"]
    units = [layer.activation for layer in layers]
    assert all(isinstance(u, ftp.Sign) for u in units) and len({id(u) for u in units}) == 3  # one unit per layer
    assert model.encoder.layers[0].activation_relu_or_gelu == 0  # the fused fast path is off
    with torch.no_grad():
        fast = model(src, tgt)  # eval + no grad: the fast path would compute GELU if it were on
    torch.testing.assert_close(fast, model(src, tgt).detach())
    assert not torch.allclose(fast, before)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(src, tgt).square().mean().backward()
        optimizer.step()
    assert all(p.grad is not None for p in model.encoder.layers[0].linear1.parameters())
    assert ftp.revert(model) == swapped
    assert all(layer.activation is F.gelu for layer in layers)
    assert all(layer.activation_relu_or_gelu == 2 for layer in model.encoder.layers)
    assert "activation" not in model.encoder.layers[0]._modules


def test_a_function_nothing_recognises_is_reported():
    layer = nn.TransformerEncoderLayer(8, 2, 16, activation=lambda x: x.clamp(0, 1))
    with pytest.warns(ftp.UnswappedActivationWarning, match="activation.*function"):
        ftp.convert(nn.Sequential(layer, nn.ReLU()))


def test_lightning_transformer_demo_converts_trains_and_reverts(tmp_path, monkeypatch, caplog):
    def fake_download(destination):  # the test's only stub: WikiText2 fetches its text from GitHub
        destination.parent.mkdir(parents=True, exist_ok=True)
        words = " ".join(f"w{i % 40}" for i in range(400))
        destination.write_text("\n".join([words[i : i + 80] for i in range(0, len(words), 80)]))

    monkeypatch.setattr(WikiText2, "download", staticmethod(fake_download))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    demo = LightningTransformer(vocab_size=64)
    layers = [*demo.model.transformer.encoder.layers, *demo.model.transformer.decoder.layers]
    callback = ftp.FTPropCallback("sign", "soft_hinge", log_every_n_steps=1)
    before = demo.model.decoder.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        make_trainer(callbacks=[callback], max_steps=2).fit(demo)
    assert callback.counts == {"swapped": 4, "excluded": 0, "left": 0}
    counts_lines = [r for r in caplog.records if "activations swapped" in r.getMessage()]
    assert [r.getMessage() for r in counts_lines] == [
        "FTPropCallback: 4 activations swapped for sign units, 0 excluded, 0 left in float (unmatched)"
    ]
    assert all(isinstance(layer.activation, ftp.Sign) for layer in layers)
    assert not torch.equal(before, demo.model.decoder.weight) and callback.latest
    ftp.revert(demo)
    assert all(layer.activation is F.relu for layer in layers)


# --- one validator --------------------------------------------------------------------------------


class MixinNet(ftp.FTPropMixin, LightningModule):
    def __init__(self, ftprop: Optional[dict] = None):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())


BAD_ARGUMENTS = [
    ({"mapping": {"Rectifier": "sign"}}, ValueError, "unknown mapping key 'Rectifier'"),
    ({"mapping": {"not a path!": "sign"}}, ValueError, "unknown mapping key"),
    ({"mapping": {"GELUTanh": "sign"}}, ValueError, "ambiguous: transformers.*timm"),
    ({"mapping": {"pkg..Act": "sign"}}, ValueError, "not a dotted class path"),
    ({"mapping": {"torch.nn.NoSuchAct": "sign"}}, ValueError, "names no nn.Module class"),
    ({"mapping": {int: "sign"}}, TypeError, "not an nn.Module subclass"),
    ({"mapping": {5: "sign"}}, TypeError, "mapping keys must be"),
    ({"mapping": {"ReLU": "binary"}}, ValueError, "unknown activation 'binary'"),
    ({"mapping": {"ReLU": 5}}, TypeError, r"mapping\['ReLU'\] must be"),
    ({"mapping": ["ReLU"]}, TypeError, "mapping must be a dict"),
    ({"include": 5}, TypeError, "include must be None, a glob pattern"),
    ({"exclude": ["a", 5]}, TypeError, "exclude must be None, a glob pattern"),
    ({"activation": "binary"}, ValueError, "unknown activation 'binary'"),
    ({"rule": "perceptron"}, ValueError, "unknown rule 'perceptron'"),
    ({"rule": 5}, TypeError, "rule must be a name or a Rule"),
    ({"weighted": "yes"}, TypeError, "weighted must be True or False"),
    ({"unit_kwargs": {"thresholds": 5}}, TypeError, "Sign does not take thresholds"),
    ({"activation": "qrelu", "unit_kwargs": {"thresholds": 1}}, ValueError, "thresholds must be an int >= 2"),
]


def _via_convert(kwargs):
    kwargs = dict(kwargs)
    ftp.convert(nn.Sequential(nn.ReLU()), **kwargs.pop("unit_kwargs", {}), **kwargs)


def _via_callback(kwargs):
    ftp.FTPropCallback(**kwargs)


def _via_mixin(kwargs):
    MixinNet(ftprop=kwargs).apply_ftprop()


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS)
@pytest.mark.parametrize("route", [_via_convert, _via_callback, _via_mixin], ids=["convert", "callback", "mixin"])
def test_a_bad_argument_raises_the_same_exception_on_every_route(route, kwargs, error, match):
    with pytest.raises(error, match=match):
        route(kwargs)


def test_spec_stores_mapping_keys_by_name_and_matches_without_importing():
    callback = ftp.FTPropCallback(mapping={nn.ReLU: "sign", "transformers.activations.NewGELUActivation": "step"})
    assert callback.spec["mapping"] == {"ReLU": "sign", "transformers.activations.NewGELUActivation": "step"}
    model = nn.Sequential(nn.Linear(2, 2), Squash(), nn.Tanh())
    key = ftp.register_activation(Squash)
    try:  # the short name of one registered class works as a key
        assert ftp.convert(model, mapping={"Squash": "qrelu", "Tanh": None}) == ["1"]
    finally:
        unregister_activation(key)
    with pytest.raises(TypeError, match="predicate, which a spec cannot store"):
        ftp.FTPropCallback(mapping={(lambda m: True): "sign"})


@pytest.mark.parametrize(
    "module_name", ["transformers.activations", "timm.layers.activations", "timm.layers.activations_me"]
)
def test_every_activation_class_of_transformers_and_timm_is_registered(module_name):
    library = pytest.importorskip(module_name)
    classes = [
        cls
        for cls in vars(library).values()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == library.__name__
    ]
    identity = {"LinearActivation"}  # transformers' "linear" activation is the identity: nothing to swap
    registered = set(ftp.registered_activations())
    missing = [c.__name__ for c in classes if c.__name__ not in identity and class_path(c) not in registered]
    assert classes and not missing
