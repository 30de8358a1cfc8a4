"""convert/revert on real torchvision models, and summary()."""

import pytest
import torch
import torchvision
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop.spec import apply_spec, make_spec, spec_differences, spec_from_dict

BUILDERS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "alexnet": lambda: torchvision.models.alexnet(num_classes=10),
}


def activation_ids(model):
    return {name: id(m) for name, m in model.named_modules(remove_duplicate=False) if ftp.match_activation(m)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_convert_swaps_every_activation_and_revert_restores_the_same_objects(name):
    model = BUILDERS[name]()
    before = activation_ids(model)
    swapped = ftp.convert(model, "sign", "sste")
    assert set(swapped) == set(before)
    assert not activation_ids(model)
    assert all(isinstance(m, ftp.Sign) and m.rule.name == "sste" for _, m in ftp.threshold_units(model))
    size = 64 if name != "alexnet" else 64
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and set(ftp.revert(model)) == set(before)
    assert activation_ids(model) == before


def test_exclude_and_include_patterns_select_by_qualified_name():
    model = torchvision.models.resnet18()
    swapped = ftp.convert(model, "qrelu", exclude=["relu", "layer4.*"])
    assert "relu" not in swapped and not any(n.startswith("layer4") for n in swapped)
    assert isinstance(model.layer4[0].relu, nn.ReLU) and isinstance(model.layer1[0].relu, ftp.QReLU)
    model = torchvision.models.alexnet()
    assert ftp.convert(model, include="classifier.*") == ["classifier.2", "classifier.5"]
    assert isinstance(model.features[1], nn.ReLU)


def test_convert_is_idempotent_and_reconverts_from_originals():
    model = torchvision.models.resnet18()
    first = ftp.convert(model, "sign")
    units = dict(ftp.threshold_units(model))
    assert ftp.convert(model, "sign") == first
    assert all(units[n] is m for n, m in ftp.threshold_units(model))
    ftp.convert(model, "step", "hinge")
    assert all(isinstance(m, ftp.Step) for _, m in ftp.threshold_units(model))
    ftp.revert(model)
    assert not ftp.threshold_units(model) and isinstance(model.relu, nn.ReLU)


def test_shared_activation_instance_becomes_one_shared_unit():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    assert ftp.convert(model) == ["1", "3"]
    assert model[1] is model[3] and isinstance(model[1], ftp.Sign)
    ftp.revert(model)
    assert model[1] is relu and model[3] is relu
    block = torchvision.models.resnet18().layer1[0]  # BasicBlock calls self.relu twice
    ftp.convert(block)
    block(torch.randn(1, 64, 8, 8)).sum().backward()


def test_convert_keeps_device_and_dtype():
    model = nn.Sequential(nn.Linear(4, 4), nn.PReLU(), nn.Linear(4, 2)).to(torch.float64)
    ftp.convert(model, "step")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


def test_mapping_overrides_default_table():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Tanh(), nn.GELU())
    swapped = ftp.convert(model, mapping={"ReLU": "qrelu", nn.Tanh: "sign", nn.GELU: None}, weighted=False)
    assert swapped == ["1", "3"]
    assert isinstance(model[1], ftp.QReLU) and isinstance(model[3], ftp.Sign) and not model[3].weighted
    assert isinstance(model[4], nn.GELU)


def test_per_target_mapping_gives_each_target_its_own_unit_arguments():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU())
    mapping = {
        "ReLU": "sign",
        "Tanh": ("qrelu", {"thresholds": 5, "mode": "per_threshold"}),
        "GELU": ["step", {"rule": "hinge"}],  # a list, as YAML gives it; a target's own rule wins
    }
    assert ftp.convert(model, rule="sste", mapping=mapping, weighted=False) == ["1", "3", "5"]
    sign, qrelu, step = model[1], model[3], model[5]
    assert isinstance(sign, ftp.Sign) and sign.rule.name == "sste" and not sign.weighted
    assert isinstance(qrelu, ftp.QReLU) and (qrelu.thresholds, qrelu.mode, qrelu.rule.name) == (
        5,
        "per_threshold",
        "sste",
    )
    assert isinstance(step, ftp.Step) and step.rule.name == "hinge" and not step.weighted
    x = torch.randn(4, 3, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the same table stored in a spec survives a YAML-like round trip and converts the same way
    spec = make_spec("sign", "sste", weighted=False, mapping=mapping)
    assert spec["mapping"]["Tanh"] == ["qrelu", {"thresholds": 5, "mode": "per_threshold"}]
    assert spec_differences(spec, spec_from_dict(dict(spec))) == []
    again = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.GELU())
    apply_spec(again, spec)
    assert [u.config() for _, u in ftp.threshold_units(again)] == [u.config() for _, u in ftp.threshold_units(model)]


@pytest.mark.parametrize(
    "target, error, match",
    [
        (("qrelu", {"thresholds": 1}), ValueError, "thresholds must be an int >= 2"),
        (("qrelu", {"stepz": 5}), TypeError, r"mapping\['Tanh'\] -> 'qrelu': QReLU does not take stepz"),
        (("binary", {"thresholds": 5}), ValueError, "unknown activation 'binary'"),
        (("qrelu", 5), TypeError, r"mapping\['Tanh'\] must be a unit name or a pair"),
        (("qrelu", {"thresholds": 5}, "x"), TypeError, "must be a unit name or a pair"),
    ],
)
def test_bad_per_target_arguments_are_refused_when_validated(target, error, match):
    model = nn.Sequential(nn.Tanh())
    with pytest.raises(error, match=match):
        ftp.convert(model, mapping={"Tanh": target})
    with pytest.raises(error, match=match):
        make_spec(mapping={"Tanh": target})
    assert isinstance(model[0], nn.Tanh)  # nothing half-swapped


def test_unit_arguments_outside_mapping_that_one_target_does_not_take_name_the_target():
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    with pytest.raises(TypeError, match=r"mapping\['ReLU'\] -> 'sign': Sign does not take thresholds.*pair in mapping"):
        ftp.convert(model, mapping={"ReLU": "sign", "Tanh": "qrelu"}, thresholds=5)
    with pytest.raises(TypeError, match=r"takes unit arguments as keywords.*not as unit_kwargs=\{'thresholds': 5\}"):
        ftp.convert(model, mapping={"ReLU": "sign", "Tanh": "qrelu"}, unit_kwargs={"thresholds": 5})


def test_unit_argument_that_a_unit_does_not_take_is_an_error():
    with pytest.raises(TypeError, match="Sign does not take thresholds; its arguments are: rule, weighted, inplace"):
        ftp.convert(nn.Sequential(nn.ReLU()), "sign", thresholds=5)


def test_model_with_nothing_to_swap_is_an_error():
    with pytest.raises(ValueError, match="found no activation to swap.*Linear"):
        ftp.convert(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no activation to swap"):
        ftp.convert(torchvision.models.alexnet(), exclude="*")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activation="binary"), "unknown activation 'binary'.*sign, step, qrelu"),
        (dict(rule="perceptron"), "unknown rule 'perceptron'.*soft_hinge"),
        (dict(mapping={"Rectifier": "sign"}), "unknown mapping key 'Rectifier'.*ReLU"),
        (dict(mapping={nn.ReLU: "binary"}), "unknown activation 'binary'"),
    ],
)
def test_bad_convert_arguments_list_valid_names(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ftp.convert(torchvision.models.alexnet(), **kwargs)


def test_summary_lists_threshold_layers_with_bits_and_elements():
    model = ftp.models.convnet4("relu")
    ftp.convert(model, "qrelu", "sste", exclude="8")
    table = ftp.summary(model, torch.randn(3, 3, 32, 32))
    assert [(layer.name, layer.activation, layer.levels, layer.bits, layer.rule) for layer in table.layers] == [
        ("2", "qrelu", 4, 2, "sste"),
        ("5", "qrelu", 4, 2, "sste"),
    ]
    assert [layer.elements for layer in table.layers] == [32 * 17 * 17, 64 * 8 * 8]
    text = str(table)
    assert "levels (bits)" in text and "4 (2)" in text and "9,248" in text
    assert table.total_bits == 2 * (32 * 17 * 17 + 64 * 8 * 8)


def test_summary_of_model_without_units_is_an_error():
    with pytest.raises(ValueError, match="no threshold units"):
        ftp.summary(nn.Linear(2, 2), torch.zeros(1, 2))
