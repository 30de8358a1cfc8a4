"""Tiny real Lightning parts shared by the callback, mixin, diagnostics and CLI tests."""

from __future__ import annotations

import glob
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ftprop.convert import threshold_units


def make_data(n: int = 64, features: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def make_loader(n: int = 64, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(make_data(n, seed=seed), batch_size=batch_size)


class TinyNet(pl.LightningModule):
    """4 -> hidden -> hidden -> 2 with ReLUs; logs ``val_loss`` when given validation data."""

    def __init__(self, hidden: int = 8, lr: float = 0.1, batchnorm: bool = False) -> None:
        super().__init__()
        norm = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()
        self.net = nn.Sequential(
            nn.Linear(4, hidden), norm, nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
        )
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8, n: int = 64) -> None:
        super().__init__()
        self.batch_size, self.n = batch_size, n

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.n, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return make_loader(16, self.batch_size, seed=1)


def make_trainer(**kwargs: Any) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class GradProbe(pl.Callback):
    """Records, independently of lightning_ftprop.diagnostics, each threshold unit's (z, g) per step."""

    def __init__(self) -> None:
        self.records: Dict[int, List[tuple]] = {}
        self._handles: list = []
        self._step = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, unit in threshold_units(pl_module):

            def hook(module, inputs, output, name=name):
                if not module.training:
                    return
                z, step = inputs[0].detach().float().clone(), self._step

                def grad_hook(g):
                    self.records.setdefault(step, []).append((name, z, g.detach().float().clone()))

                output.register_hook(grad_hook)

            self._handles.append(unit.register_forward_hook(hook))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_fit_end(self, trainer, pl_module) -> None:
        for h in self._handles:
            h.remove()


def reference_counts(records: List[tuple]) -> Dict[str, Dict[str, float]]:
    """Raw sums per layer for sign/step units under soft_hinge: N, ignored, mismatch, saturated, loss."""
    out: Dict[str, Dict[str, float]] = {}
    for name, z, g in records:
        c = out.setdefault(name, dict(n=0, ignored=0, mismatch=0, saturated=0, loss=0.0))
        t = -torch.sign(g)
        side = torch.where(z > 0, 1.0, -1.0)
        active = t != 0
        c["n"] += z.numel()
        c["ignored"] += int((~active).sum())
        c["mismatch"] += int((active & (t != side)).sum())
        # 1 - tanh^2(z) = 4 y (1 - y), y = sigmoid(-2|z|) in float32: exactly zero only where y underflows
        c["saturated"] += int((active & (torch.sigmoid(-2 * z.float().abs()) == 0)).sum())
        c["loss"] += float((g.abs() * (1 - torch.tanh(t * z)) * active).sum())
    return out


def reference_stats(counts: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """``{"ftprop/<layer>/<stat>": value}`` from :func:`reference_counts` (layer names '.' -> '_')."""
    stats = {}
    for name, c in counts.items():
        key = name.replace(".", "_")
        active = c["n"] - c["ignored"]
        stats[f"ftprop/{key}/mismatch"] = c["mismatch"] / c["n"]
        stats[f"ftprop/{key}/ignored"] = c["ignored"] / c["n"]
        stats[f"ftprop/{key}/saturated"] = c["saturated"] / active if active else 0.0
        stats[f"ftprop/{key}/loss"] = c["loss"] / c["n"]
    return stats


def _wandb_records(path: str) -> list:
    """Every complete record in a ``run-*.wandb`` file, as ``wandb_internal_pb2.Record``.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending, raw = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        if pos + 7 + length > len(data):
            break  # a chunk still being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            raw.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            raw.append(pending + chunk)
    records = []
    for chunk in raw:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def read_wandb_history(run_dir: str, timeout: float = 60.0) -> List[Dict[str, str]]:
    """The history rows of a finished offline W&B run, parsed from its ``run-*.wandb`` file.

    ``run.finish()`` returns before wandb's core process has written everything, so this waits
    (at most ``timeout`` seconds) for the run's ``exit`` record, which follows all history.
    """
    (path,) = glob.glob(f"{run_dir}/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record after {timeout} s")
        time.sleep(0.2)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row: Dict[str, str] = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = item.value_json
            rows.append(row)
    return rows


def unit_types(module: nn.Module) -> List[str]:
    return [type(u).__name__ for _, u in threshold_units(module)]


def count_module_types(module: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in module.modules())


def first_param_snapshot(module: nn.Module) -> Optional[Tensor]:
    return next(module.parameters()).detach().clone()


def run_ddp_script(script: str, out: Path, *args: str) -> None:
    """Run ``tests/<script> <out> <args...>`` as its own process: a 2-rank CPU DDP launch outside pytest.

    Inside pytest, ``strategy="ddp"`` would relaunch the pytest command line as rank 1, so DDP tests
    run a script. The distributed variables of the environment are dropped so Lightning picks a free port.
    """
    tests = Path(__file__).resolve().parent
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent), str(tests), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(tests / script), str(out), *args],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
