"""A lean import: the core needs only torch, and Lightning loads only when a Lightning piece is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = (
    "lightning",
    "pytorch_lightning",
    "torchmetrics",
    "torchvision",
    "scipy",
    "matplotlib",
    "wandb",
    "sklearn",
    "transformers",
    "timm",
    "onnx",
    "onnxruntime",
)


def _loaded_after(code: str) -> set:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


CORE = """
import lightning_ftprop.functional, lightning_ftprop.rules, lightning_ftprop.nn
import lightning_ftprop.convert, lightning_ftprop.spec, lightning_ftprop.summary
import lightning_ftprop as ftp, torch
ftp.convert(torch.nn.Sequential(torch.nn.ReLU()), "sign")
"""


@pytest.mark.slow
def test_core_imports_load_no_lightning_torchvision_scipy_matplotlib_wandb_or_sklearn():
    loaded = _loaded_after(CORE)
    assert "torch" in loaded and "lightning_ftprop" in loaded
    assert not loaded & set(HEAVY), f"the core loaded {sorted(loaded & set(HEAVY))}"


def test_lightning_pieces_are_attributes_loaded_on_first_use():
    import lightning_ftprop
    from lightning_ftprop.callback import FTPropCallback
    from lightning_ftprop.module import ImageClassifier

    assert lightning_ftprop.FTPropCallback is FTPropCallback and lightning_ftprop.ImageClassifier is ImageClassifier
    assert {"FTPropMixin", "FTPropDiagnostics", "models", "data"} <= set(dir(lightning_ftprop))
    from lightning_ftprop import FTPropMixin  # `from ... import` goes through the same lazy look-up

    assert FTPropMixin.__module__ == "lightning_ftprop.mixin"


def test_unknown_attribute_is_an_attribute_error():
    import lightning_ftprop

    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        lightning_ftprop.Trainer  # noqa: B018
