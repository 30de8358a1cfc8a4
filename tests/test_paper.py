"""lightning_ftprop.paper holds the paper's six methods and recipes; everything else reads them from there."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from lightning_ftprop.paper import FLOAT_BASELINES, METHODS, RECIPES, THRESHOLD_METHODS, method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_six_methods_are_table_1s_in_its_order():
    assert [(m.activation, m.rule) for m in METHODS] == [
        ("relu", None),
        ("saturated_relu", None),
        ("sign", "sste"),
        ("sign", "soft_hinge"),
        ("qrelu", "sste"),
        ("qrelu", "soft_hinge"),
    ]
    assert FLOAT_BASELINES == METHODS[:2] and THRESHOLD_METHODS == METHODS[2:]


def test_recipes_are_the_reference_readmes_hyperparameters():
    # digest sections 3.2-3.5: optimizer, lr, epochs, milestones, batch, weight decay (full, sign, qrelu), qrelu thresholds
    expected = {
        "convnet4": ("adam", 2.5e-4, 300, (200, 250), 64, (5e-4, 5e-4, 5e-4), 3),
        "convnet8": ("adam", 1e-3, 300, (200, 250), 64, (5e-4, 5e-4, 5e-4), 3),
        "alexnet_dorefa": ("adam", 1e-4, 80, (56, 64), 128, (5e-4, 5e-6, 5e-5), 3),
        "resnet18": ("sgd", 0.1, 90, (30, 60), 256, (1e-4, 5e-7, 1e-5), 5),
    }
    got = {
        net: (r.optimizer, r.lr, r.epochs, r.milestones, r.batch_size, r.weight_decay, r.qrelu_thresholds)
        for net, r in RECIPES.items()
    }
    assert got == expected


def test_method_lookup_takes_both_spellings_and_names_the_choices_on_a_bad_one():
    assert method("sign/soft_hinge") is method("sign_soft_hinge") is METHODS[3]
    with pytest.raises(ValueError, match=r"unknown method 'sign/hinge'.*relu, saturated_relu, sign/sste"):
        method("sign/hinge")
    with pytest.raises(TypeError, match="must be a str, got int"):
        method(3)


def test_the_method_list_is_written_out_once_in_the_repository():
    """No other file spells out the six methods: a line naming both float baselines marks a copy of the list."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    copies = []
    for path in files.stdout.split():
        if path in ("lightning_ftprop/paper.py", "tests/test_paper.py"):
            continue
        with open(os.path.join(ROOT, path)) as handle:
            text = handle.read()
        if re.search(r"""["']saturated_relu["']""", text) and re.search(r"""["']qrelu[_/]soft_hinge["']""", text):
            copies.append(path)
    assert copies == []
