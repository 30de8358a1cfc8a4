"""Run by test_fabric.py: FabricFTProp under ``Fabric(strategy="ddp")``, 2 CPU processes (gloo).

    python tests/fabric_script.py OUT_DIR      -> OUT_DIR/fabric-MEMORY-rank{0,1}.json

Each rank trains STEPS steps on its own batches (seed = rank), every memory mode in turn, and logs the
statistics with ``fabric.log_dict`` to a CSVLogger. :func:`run_single` is the single-process reference the
test runs (outside any process group): the same steps on both ranks' batches, each loss halved (what DDP's
gradient average gives).
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger
from lightning_helpers import TinyNet, make_data

from lightning_ftprop.fabric import FabricFTProp

STEPS, BATCH = 3, 8
MODES = ("exact", "packed", "recompute")


def batches(rank: int):
    data = make_data(n=STEPS * BATCH, seed=rank)
    return [(data.tensors[0][i : i + BATCH], data.tensors[1][i : i + BATCH]) for i in range(0, STEPS * BATCH, BATCH)]


def model():
    torch.manual_seed(0)
    return TinyNet().net  # Linear -> ReLU -> Linear -> ReLU -> Linear: a plain nn.Module, no BatchNorm


def run_fabric(fabric: Fabric, out: Path, memory: str) -> None:
    net = model()
    ftprop = FabricFTProp(net, "sign", memory=memory, log_every_n_steps=1)
    net, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    stats = {}
    for step, (x, y) in enumerate(batches(fabric.global_rank)):
        with ftprop.step(step):
            fabric.backward(F.cross_entropy(net(x), y))
        optimizer.step()
        optimizer.zero_grad()
        stats[step] = ftprop.stats()
        fabric.log_dict(stats[step], step=step)
    params = {n: p.detach().tolist() for n, p in net.module.named_parameters()}
    result = dict(layers=ftprop.layers, params=params, stats=stats, world_size=fabric.world_size)
    (out / f"fabric-{memory}-rank{fabric.global_rank}.json").write_text(json.dumps(result))


def run_single(memory: str) -> dict:
    net = model()
    ftprop = FabricFTProp(net, "sign", memory=memory, log_every_n_steps=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    stats = {}
    for step, pairs in enumerate(zip(batches(0), batches(1))):
        with ftprop.step(step):
            for x, y in pairs:
                (F.cross_entropy(net(x), y) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
        stats[step] = ftprop.stats()
    params = {n: p.detach().tolist() for n, p in net.named_parameters()}
    return json.loads(json.dumps(dict(params=params, stats=stats)))  # the keys as the ranks' JSON has them


if __name__ == "__main__":
    out = Path(sys.argv[1])
    fabric = Fabric(accelerator="cpu", strategy="ddp", devices=2, loggers=CSVLogger(out / "logs", name="fabric"))
    fabric.launch()
    for memory in MODES:
        run_fabric(fabric, out, memory)
    fabric.logger.finalize("success")  # the CSV logger writes metrics.csv (rank zero)
