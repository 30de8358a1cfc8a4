"""Quiet logs off a terminal: one line per epoch in place of a progress bar; a terminal keeps Lightning's bar."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_ftprop.progress import EpochLineProgressBar, progress_bar_for_output

REPO = Path(__file__).resolve().parents[1]


def _site_without(tmp_path: Path, hidden: tuple) -> Path:
    """A copy of this venv's site-packages (symlinks) that lacks the ``hidden`` distributions entirely.

    Run with ``python -S`` and this folder on PYTHONPATH, a program sees neither the packages' modules
    nor their metadata: the environment of a user who never installed them.
    """
    import site

    source = next(Path(p) for p in site.getsitepackages() if (Path(p) / "lightning").is_dir())
    target = tmp_path / "site"
    target.mkdir()
    for entry in source.iterdir():
        stem = entry.name.split("-")[0].lower().removesuffix(".py")
        if stem not in hidden and not entry.name.endswith(".pth"):
            (target / entry.name).symlink_to(entry)
    return target


@pytest.mark.slow
def test_one_epoch_demo_without_rich_writes_a_short_log_with_one_line_per_epoch(tmp_path):
    site_dir = _site_without(tmp_path, hidden=("rich",))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site_dir)]), "OMP_NUM_THREADS": "1"}
    probe = "import importlib.util as u; from lightning.pytorch.utilities.imports import _RICH_AVAILABLE as r; "
    probe += "print(u.find_spec('rich') is None, bool(r))"
    seen = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert seen.stdout.split() == ["True", "False"], seen.stdout + seen.stderr  # rich is really absent

    log = tmp_path / "demo.log"
    command = [sys.executable, "-S", "-m", "lightning_ftprop.cli", "demo", "--epochs", "1", "--limit-batches", "30"]
    command += ["--methods", "sign/sste", "--threads", "1", "--output-dir", str(tmp_path / "out")]
    with open(log, "wb") as handle:  # stdout and stderr are a file, not a terminal
        proc = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=300, cwd=tmp_path)
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert log.stat().st_size < 20_000, output[-3000:]
    assert "\r" not in output  # no bar redraws
    epoch_lines = [line for line in output.splitlines() if line.startswith("epoch 1/1: ")]
    assert len(epoch_lines) == 1 and "val/acc=" in epoch_lines[0] and "train/loss_epoch=" in epoch_lines[0], output
    assert "sign/sste" in output and "best test acc" in output


def test_a_terminal_keeps_lightnings_own_progress_bar():
    controller, terminal = os.openpty()
    with open(terminal, "w") as tty, open(controller, "rb", buffering=0):
        assert tty.isatty()
        assert progress_bar_for_output(tty) is None  # Lightning then picks rich or tqdm as before
    assert isinstance(progress_bar_for_output(io.StringIO()), EpochLineProgressBar)


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_line_bar_prints_one_line_per_epoch_with_the_progress_bar_metrics(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 4)), batch_size=8)
    stream = io.StringIO()
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[EpochLineProgressBar(stream)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Tiny(), data, data)
    trainer.validate(trainer.lightning_module, data, verbose=False)
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3", "validate"]
    for line in lines[:3]:
        assert "train/loss_epoch=" in line and "val/loss=" in line and "_step=" not in line and "v_num" not in line
        assert line.endswith(" s)")


def test_cli_trainer_gets_the_epoch_line_bar_off_a_terminal_unless_bars_are_disabled(tmp_path, monkeypatch):
    from lightning_ftprop.cli import FTPropCLI, resolve_config

    monkeypatch.chdir(tmp_path)
    args = ["--config", resolve_config("convnet4_fashion_mnist_sign_sste"), "--trainer.logger=false"]
    assert not sys.stdout.isatty()  # pytest captures stdout
    cli = FTPropCLI(args=args, run=False)
    assert isinstance(cli.trainer.progress_bar_callback, EpochLineProgressBar)
    cli = FTPropCLI(args=[*args, "--trainer.enable_progress_bar=false"], run=False)
    assert cli.trainer.progress_bar_callback is None
