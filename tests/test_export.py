"""export: frozen units, BatchNorm folded into thresholds, ONNX checked against onnxruntime, and the CLI."""

from __future__ import annotations

import os
import warnings
from typing import Optional

import pytest
import torch
import torchvision
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop.export import (
    FoldedThreshold,
    FrozenQReLU,
    FrozenSign,
    FrozenStep,
    check_onnx_domains,
    export_onnx,
    fold_thresholds,
    freeze,
)
from lightning_ftprop.functional import qrelu_values, step_values
from lightning_ftprop.models import get_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: (activation, unit kwargs) for the four threshold activations the issue names.
ACTS = {"sign": {}, "step": {}, "qrelu3": {"thresholds": 3}, "qrelu5": {"thresholds": 5}}
#: arch -> (input side, number of random inputs). The DoReFa AlexNet takes 64x64 here: its convs, BNs, pools
#: and units are unchanged and the maps end at 1x1, so its first FC layer gets 256 inputs instead of 9216.
#: Even so it costs ~120 M multiply-adds per image, so it is checked on 128 inputs to keep the suite fast.
NETS = {"convnet4": (32, 256), "convnet8": (32, 256), "resnet18": (32, 256), "alexnet_dorefa": (64, 128)}


def _net(arch: str, act: str, seed: int = 0) -> nn.Module:
    """A paper network with random, non-trivial BatchNorm statistics: negative gammas and one gamma = 0."""
    torch.manual_seed(seed)
    activation = "qrelu" if act.startswith("qrelu") else act
    model = get_model(arch, activation=activation, num_classes=10, **ACTS[act])
    if arch == "alexnet_dorefa":  # the small-input variant (see NETS)
        first_fc = next(i for i, m in enumerate(model) if isinstance(m, nn.Linear))
        model[first_fc] = nn.Linear(256, 4096, bias=False)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.normal_(0, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(0, 1)
            module.weight.data[0] = 0.0
            module.bias.data.normal_(0.3, 0.5)
            assert channels > 1
    return model.eval()


def _inputs(arch: str, seed: int = 1) -> torch.Tensor:
    side, n = NETS[arch]
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple:
    """(fraction of inputs with the same class, median relative logit difference, inputs whose class differs)."""
    same = reference.argmax(1) == other.argmax(1)
    rel = (other - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)
    return same.float().mean().item(), rel.median().item(), int((~same).sum())


def _ort_logits(path: str, x: torch.Tensor) -> torch.Tensor:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


# --- frozen units -------------------------------------------------------------------------------------


def test_frozen_units_compute_the_training_forward_including_ties_and_nan():
    z = torch.tensor([-1.0, -0.0, 0.0, 1e-30, 0.25, 0.5, 1 / 3, 2 / 3, 1.0, 2.0, float("nan"), float("inf")])
    for frozen, unit in [
        (FrozenSign(), ftp.Sign()),
        (FrozenStep(), ftp.Step()),
        (FrozenQReLU(5), ftp.QReLU(thresholds=5)),
    ]:
        assert torch.allclose(frozen(z), unit(z), equal_nan=True, rtol=0, atol=0)
    assert FrozenSign()(torch.zeros(1)).item() == -1 and FrozenStep()(torch.zeros(1)).item() == 0
    assert torch.isnan(FrozenQReLU(3)(torch.tensor([float("nan")]))).all()
    assert torch.equal(FrozenQReLU(3)(z[:10]), qrelu_values(z[:10].clone(), 3))
    assert torch.equal(FrozenStep()(z[:10]), step_values(z[:10].clone()))


def test_freeze_leaves_no_autograd_function_and_scripts_and_exports_with_identical_outputs():
    model = _net("resnet18", "qrelu5")
    x = torch.randn(4, 3, 32, 32)
    frozen = freeze(model)
    assert not list(ftp.threshold_units(frozen)) and list(ftp.threshold_units(model))  # original untouched
    assert isinstance(frozen.layer1[0].relu, FrozenQReLU) and frozen.layer1[0].relu.thresholds == 5
    shared = ftp.Sign()
    twice = freeze(nn.Sequential(nn.Linear(2, 2), shared, nn.Linear(2, 2), shared))
    assert twice[1] is twice[3] and isinstance(twice[1], FrozenSign)  # a shared unit stays one module
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(frozen(x), expected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.equal(torch.jit.script(frozen)(x), expected)
        assert torch.equal(torch.export.export(frozen, (x,)).module()(x), expected)
    graph = torch.export.export(frozen, (x,)).graph_module.code
    assert "autograd" not in graph and "Function" not in graph


# --- folding ------------------------------------------------------------------------------------------


def _bn_chain(activation: str, gamma, beta, mean, var, thresholds: int = 3, eps: float = 1e-5):
    bn = nn.BatchNorm1d(len(gamma), eps=eps).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        bn.running_mean.copy_(torch.tensor(mean))
        bn.running_var.copy_(torch.tensor(var))
    unit = ftp.make_unit(activation, thresholds=thresholds) if activation == "qrelu" else ftp.make_unit(activation)
    return nn.Sequential(nn.Linear(len(gamma), len(gamma)), bn, unit).eval()


@pytest.mark.parametrize("activation", ["sign", "step", "qrelu"])
def test_fold_handles_negative_and_zero_gamma_ties_and_nan(activation):
    # channel 0: gamma > 0; 1: gamma < 0 (direction flips); 2: gamma = 0, beta > 0; 3: gamma = 0, beta < 0
    model = _bn_chain(
        activation, [2.0, -2.0, 0.0, 0.0], [0.5, 0.5, 0.7, -0.7], [1.0, 1.0, 0.0, 0.0], [1.0] * 4, eps=0.0
    )
    folded = fold_thresholds(model)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    assert sum(isinstance(m, FoldedThreshold) for m in folded.modules()) == 1
    with torch.no_grad():
        x = torch.randn(512, 4) * 3
        assert torch.equal(folded(x), model(x))
        # ties: with eps = 0, var = 1 these x give z = 0 exactly (row 0) and z = 1/2 exactly (row 1)
        head = model[0]
        head.weight.data = torch.eye(4)
        head.bias.data.zero_()
        folded = fold_thresholds(model)
        ties = torch.tensor([[0.75, 1.25, 5.0, 5.0], [1.0, 1.0, -5.0, -5.0], [0.75, 1.25, 0.0, 0.0]])
        out = folded(ties)
        assert torch.equal(out, model(ties))
        off = -1.0 if activation == "sign" else 0.0
        assert out[0, :2].tolist() == [off, off]  # z == 0 exactly: the unit is off (sign(0) = -1, step(0) = 0)
        if activation == "qrelu":
            assert torch.equal(out[1, :2], torch.full((2,), 1 / 3))  # z == 1/2 exactly is not above level 1/2
        constant_on = 2 / 3 if activation == "qrelu" else 1.0  # unit(0.7): qrelu with 3 thresholds: ceil(1.4) / 3
        assert torch.equal(out[:, 2], torch.full((3,), constant_on))  # gamma = 0, beta > 0: constant, whatever x is
        assert out[:, 3].tolist() == [off] * 3  # gamma = 0, beta < 0: constant off
        nan = folded(torch.full((1, 4), float("nan")))
        assert torch.isnan(nan).all()


def test_fold_across_a_max_pool_negates_the_producer_where_gamma_is_negative():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0, -2.0, 1.0]))
        bn.bias.normal_(0, 0.5)
        bn.running_mean.normal_(0, 0.3)
    model = nn.Sequential(conv, bn, nn.MaxPool2d(3, 2, padding=1), ftp.Sign(), nn.Flatten()).eval()
    folded = fold_thresholds(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(64, 3, 12, 12)
    with torch.no_grad():
        assert (folded(x) != model(x)).float().mean().item() < 1e-4
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.equal(torch.jit.script(folded)(x), folded(x))
        assert torch.equal(torch.export.export(folded, (x,)).module()(x), folded(x))
    assert model[0].weight is conv.weight and torch.equal(conv.weight, model[0].weight)  # the original is untouched


def test_folded_thresholds_are_exact_and_the_float_bn_flips_only_near_a_threshold():
    """Folded units equal unit(a x + b) computed in float64 for every float32 x; the float32 BN may not.

    Prints the measured flip rates (unfolded float32 BatchNorm vs the exact unit) for random inputs and
    for inputs within 4 ulp of a threshold.
    """
    torch.manual_seed(0)
    channels, n = 64, 20000
    for activation, thresholds in [("sign", 0), ("qrelu", 5)]:
        gamma = torch.randn(channels)
        beta, mean, var = torch.randn(channels) * 0.5, torch.randn(channels) * 0.3, torch.rand(channels) + 0.5
        model = _bn_chain(
            activation, gamma.tolist(), beta.tolist(), mean.tolist(), var.tolist(), thresholds=thresholds or 3
        )
        model[0] = nn.Identity()
        folded = fold_thresholds(model)
        thetas = [k / (thresholds - 1) for k in range(thresholds)] if thresholds else [0.0]
        a = gamma.double() / torch.sqrt(var.double() + 1e-5)
        b = beta.double() - a * mean.double()
        theta = torch.tensor(thetas, dtype=torch.float64)[torch.randint(len(thetas), (n, channels))]
        t = ((theta - b) / a).float()
        ulp = torch.nextafter(t.abs(), torch.full_like(t, float("inf"))) - t.abs()
        near = t + ulp * torch.randint(-4, 5, t.shape)  # within 4 ulp of a threshold
        for kind, x in [("random", torch.randn(n, channels)), ("within 4 ulp", near)]:
            z64 = a * x.double() + b
            if activation == "sign":
                exact = ((z64 > 0).double() * 2 - 1).float()
            else:
                exact = (torch.ceil((thresholds - 1) * z64).clamp(0, thresholds) / thresholds).float()
            with torch.no_grad():
                out_folded, out_float = folded(x), model(x)
            assert torch.equal(out_folded, exact)  # the fold is exact
            flipped = out_float != exact
            print(
                f"\n{activation}, {kind} inputs: the float32 BatchNorm flips {flipped.float().mean().item():.2e} of units"
            )
            if kind == "random":
                assert flipped.float().mean().item() < 1e-4
            else:
                assert flipped.float().mean().item() < 0.5


# Each ONNX export takes 2-10 s here, so each net is exported with one activation (together: all four);
# folded vs unfolded is checked for every net and activation in PyTorch.
ONNX_ACT = {"convnet4": "sign", "convnet8": "qrelu5", "resnet18": "step", "alexnet_dorefa": "qrelu3"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(NETS))
def test_folded_and_onnxruntime_models_give_the_pytorch_classes(arch, tmp_path):
    x = _inputs(arch)
    for act in ACTS:
        model = _net(arch, act)
        folded = fold_thresholds(model)
        n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        n_left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        # resnet18: the 9 BNs before a unit fold; bn2 (before the residual add) and the shortcut BNs stay
        assert n_left == (n_bn - 9 if arch == "resnet18" else 0), (act, n_bn, n_left)
        with torch.no_grad():
            expected = model(x)
            same, rel, differ = _agreement(expected, folded(x))
        print(f"\n{arch} {act}: folded vs unfolded: {differ}/{len(x)} classes differ, median rel diff {rel:.1e}")
        assert same >= 0.99 and rel <= 1e-4
        if act != ONNX_ACT[arch]:
            continue
        path = export_onnx(model, tmp_path / "model.onnx", x[:1])
        assert os.listdir(tmp_path) == ["model.onnx"]  # no temporary file left behind
        proto = onnx.load(path)
        assert check_onnx_domains(proto) == []
        assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
        assert max(o.version for o in proto.opset_import) >= 17
        ops = {node.op_type for node in proto.graph.node}
        assert "BatchNormalization" not in ops
        same, rel, differ = _agreement(expected, _ort_logits(path, x))
        print(f"{arch} {act}: onnxruntime vs PyTorch: {differ}/{len(x)} classes differ, median rel diff {rel:.1e}")
        assert same >= 0.99 and rel <= 1e-4


def test_first_three_layers_of_a_converted_torchvision_model_export(tmp_path):
    torch.manual_seed(0)
    stem = nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:3])  # conv1, bn1, relu
    assert ftp.convert(stem, "sign") == ["2"]
    stem.eval()
    with torch.no_grad():
        stem[1].running_mean.normal_(0, 0.3)
        stem[1].weight.normal_(0, 1)
    x = torch.randn(8, 3, 64, 64)
    for fold in (True, False):
        path = export_onnx(stem, tmp_path / f"stem_{fold}.onnx", x[:1], fold=fold)
        proto = onnx.load(path)
        assert check_onnx_domains(proto) == []
        with torch.no_grad():
            out = _ort_logits(path, x)
            assert (out != stem(x)).float().mean().item() < 1e-4
            assert set(out.unique().tolist()) <= {-1.0, 1.0}
            nan_input = x[:1].clone()
            nan_input[0, 0, 10, 10] = float("nan")  # NaN in gives NaN out, in onnxruntime too
            assert torch.equal(_ort_logits(path, nan_input).isnan(), stem(nan_input).isnan())
            assert stem(nan_input).isnan().any()


class _DataDependentAct(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def forward(self, x):
        if x.mean() > 0:
            return torch.tanh(x)
        return x


def test_a_model_that_cannot_export_names_the_module_and_writes_no_file(tmp_path):
    model = nn.Sequential(
        nn.Linear(4, 8), ftp.Sign(), nn.Sequential(nn.Linear(8, 8), _DataDependentAct()), nn.Linear(8, 2)
    )
    target = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match=r"module '2\.1' \(_DataDependentAct\)") as info:
        export_onnx(model, target, torch.randn(1, 4), fold=False)
    assert "no file was written" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_model_without_threshold_units_exports_as_it_is_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(16, 4)
    with pytest.warns(UserWarning, match="has no threshold units; exporting it as it is"):
        path = export_onnx(model, tmp_path / "float.onnx", x[:1])
    with torch.no_grad():
        assert torch.allclose(_ort_logits(path, x), model(x), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(example_input=[1, 2]), TypeError, "example_input must be a tensor"),
        (dict(opset_version=13), ValueError, "opset_version must be an int >= 17"),
    ],
)
def test_bad_export_arguments_are_refused(kwargs, error, match, tmp_path):
    args = dict(example_input=torch.randn(1, 4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        export_onnx(nn.Sequential(nn.Linear(4, 2), ftp.Sign()), tmp_path / "x.onnx", **args)
    assert os.listdir(tmp_path) == []


# --- summary ------------------------------------------------------------------------------------------


def test_summary_reports_inference_bits_beside_float32():
    model = get_model("convnet4", activation="qrelu", thresholds=5)
    table = ftp.summary(model, torch.randn(2, 3, 32, 32))
    first = table.layers[0]
    assert first.bits == 3 and first.inference_bits == 3 * first.elements and first.float32_bits == 32 * first.elements
    assert f"{first.inference_bits:,} ({first.float32_bits:,})" in str(table)
    assert "inference bits/sample (as float32)" in str(table)


# --- CLI ----------------------------------------------------------------------------------------------


def _fit_and_save(model, path, callbacks=()):
    from lightning_helpers import make_trainer
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    trainer = make_trainer(max_steps=2, callbacks=list(callbacks))
    trainer.fit(model, DataLoader(data, batch_size=8))
    trainer.save_checkpoint(path)
    return model.eval()


try:
    from lightning.pytorch import LightningModule as _LM

    class FloatClassifier(_LM):
        """A float convnet8 (BN, ReLU): what a user's own LightningModule under FTPropCallback looks like."""

        def __init__(self):
            super().__init__()
            self.net = get_model("convnet8", activation="relu", in_channels=1)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class MixinClassifier(ftp.FTPropMixin, FloatClassifier):
        """The same network, converted by the mixin from hparams['ftprop']."""

        def __init__(self, ftprop: Optional[dict] = None):
            super().__init__()
            self.save_hyperparameters()

except ImportError:  # pragma: no cover
    FloatClassifier = MixinClassifier = None


def _check_cli_export(ckpt, trained, tmp_path, *extra):
    from lightning_ftprop.cli import main

    out = tmp_path / "model.onnx"
    assert main(["export", "--ckpt_path", str(ckpt), "--output", str(out), *extra]) == 0
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        same, rel, differ = _agreement(trained(x), _ort_logits(str(out), x))
    assert same >= 0.99 and rel <= 1e-4, differ


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_cli_exports_checkpoints_of_the_callback_the_mixin_and_image_classifier(tmp_path):
    torch.manual_seed(0)
    # ImageClassifier with sign units
    trained = _fit_and_save(ftp.ImageClassifier("convnet4", "sign", in_channels=1), tmp_path / "a.ckpt")
    _check_cli_export(tmp_path / "a.ckpt", trained, tmp_path)
    # FTPropCallback on a user's float LightningModule: the spec lives in the callback state
    callback = ftp.FTPropCallback(
        "qrelu", "sste", unit_kwargs={"thresholds": 5}, log_every_n_steps=0, histogram_every_n_steps=0
    )
    trained = _fit_and_save(FloatClassifier(), tmp_path / "b.ckpt", [callback])
    assert list(ftp.threshold_units(trained))
    _check_cli_export(
        tmp_path / "b.ckpt",
        trained,
        tmp_path,
        "--model_class",
        f"{__name__}.FloatClassifier",
        "--input_shape",
        "1,28,28",
    )
    # FTPropMixin: the spec lives in checkpoint["callbacks"]["ftprop"], as the callback's
    mixin = MixinClassifier(ftprop={"activation": "step", "log_every_n_steps": 0, "histogram_every_n_steps": 0})
    trained = _fit_and_save(mixin, tmp_path / "c.ckpt")
    _check_cli_export(
        tmp_path / "c.ckpt",
        trained,
        tmp_path,
        "--model_class",
        f"{__name__}.MixinClassifier",
        "--input_shape",
        "1,28,28",
    )


def test_cli_export_of_an_unknown_checkpoint_is_a_clear_error(tmp_path, capsys):
    from lightning_ftprop.cli import main

    missing = tmp_path / "nope.ckpt"
    assert main(["export", "--ckpt_path", str(missing), "--output", str(tmp_path / "m.onnx")]) == 2
    assert f"checkpoint '{missing}' does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    assert main(["export", "--ckpt_path", str(junk), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "is not a readable PyTorch checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    assert main(["export", "--ckpt_path", str(tmp_path / "plain.pt"), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "is not a Lightning checkpoint (it has no 'state_dict')" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["junk.ckpt", "plain.pt"]
