"""A lean import: the core needs only torch, and Lightning loads only when a Lightning piece is used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("lightning", "pytorch_lightning", "torchmetrics", "torchvision", "scipy", "matplotlib", "wandb", "sklearn")


def _loaded_after(code: str) -> set:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import lightning_ftprop",
        "import lightning_ftprop.functional",
        "import lightning_ftprop.rules, lightning_ftprop.nn, lightning_ftprop.convert, lightning_ftprop.summary",
        "import lightning_ftprop as ftp, torch; ftp.convert(torch.nn.Sequential(torch.nn.ReLU()), 'sign')",
    ],
)
def test_core_imports_load_no_lightning_torchvision_scipy_matplotlib_wandb_or_sklearn(code):
    loaded = _loaded_after(code)
    assert "torch" in loaded
    assert not loaded & set(HEAVY), f"{code!r} loaded {sorted(loaded & set(HEAVY))}"


def test_lightning_loads_when_a_lightning_piece_is_used():
    loaded = _loaded_after("import lightning_ftprop as ftp; ftp.FTPropCallback")
    assert "lightning" in loaded  # (Lightning itself then imports scipy, and matplotlib where installed)
    assert "FTPropMixin" in dir(__import__("lightning_ftprop"))


def test_unknown_attribute_is_an_attribute_error():
    import lightning_ftprop

    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        lightning_ftprop.Trainer  # noqa: B018
