"""The shipped configs: they are what scripts/generate_configs.py writes, and the offline one logs diagnostics."""

from __future__ import annotations

import csv
import importlib.util
import os

import pytest

from lightning_ftprop.cli import CONFIG_DIR, main
from lightning_ftprop.paper import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")


def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate_configs", os.path.join(ROOT, "scripts", "generate_configs.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_configs_equal_what_the_generator_writes():
    expected = _generator().configs()
    committed = sorted(name for name in os.listdir(CONFIG_DIR) if name.endswith(".yaml"))
    assert committed == sorted(expected)
    for name, text in expected.items():
        with open(os.path.join(CONFIG_DIR, name)) as handle:
            assert handle.read() == text, f"{name} differs from scripts/generate_configs.py's output; rerun it"


def test_fashion_mnist_configs_cover_the_six_methods_offline():
    names = sorted(n[:-5] for n in os.listdir(CONFIG_DIR) if n.startswith("convnet4_fashion_mnist_"))
    assert names == sorted(f"convnet4_fashion_mnist_{m.slug}" for m in METHODS)
    for name in names:
        with open(os.path.join(CONFIG_DIR, name + ".yaml")) as handle:
            text = handle.read()
        assert "EmbeddedFashionMNISTDataModule" in text and "download" not in text and "data_dir" not in text


def test_fashion_mnist_sign_soft_hinge_config_logs_ftprop_diagnostics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config logs under ./lightning_logs
    main(
        [
            "fit",
            "--config",
            "convnet4_fashion_mnist_sign_soft_hinge",
            "--trainer.max_steps",
            "20",
            "--trainer.limit_val_batches=2",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ]
    )
    (metrics,) = tmp_path.rglob("metrics.csv")
    with open(metrics) as handle:
        columns = next(csv.reader(handle))
    layers = {c.split("/")[1] for c in columns if c.startswith("ftprop/")}
    assert layers == {"net_2", "net_5", "net_8"}  # the three sign layers of convnet4
    assert {f"ftprop/net_2/{stat}" for stat in ("mismatch", "ignored", "saturated", "loss")} <= set(columns)
    (last,) = tmp_path.rglob("last.ckpt")
    import torch

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["callbacks"]["ftprop"]["spec"]["activation"] == "sign" and checkpoint["global_step"] == 20
