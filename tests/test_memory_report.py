"""memory.saved_bytes: what autograd holds for the backward, on every path, and the win each mode gives.

The targets are those of the memory issue, held memory against the float twin (ReLU, plain autograd)
on the same path; the benchmarks (benchmarks/memory.py) measure RSS beside this accounting.
"""

from __future__ import annotations

import pytest
import torch
from lightning_helpers import TinyNet, make_loader, make_trainer
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory
from lightning_ftprop.models import get_model

CASES = {  # net -> (input shape, batch)
    "convnet4": ((3, 32, 32), 32),
    "resnet18": ((3, 64, 64), 16),
}
#: (net, path) -> {mode: the largest ratio to the float twin allowed}
TARGETS = {
    ("resnet18", "fp32"): {"packed": 0.50},
    ("resnet18", "bf16"): {"packed": 0.55, "recompute": 0.10},
    ("convnet4", "fp32"): {"packed": 0.66},
    ("convnet4", "bf16"): {"packed": 0.70},
}


def _pair(net: str):
    torch.manual_seed(0)
    twin = get_model(net, activation="relu", num_classes=10)
    model = get_model(net, activation="sign", rule="soft_hinge", num_classes=10)
    shape, batch = CASES[net]
    return twin, model, torch.randn(batch, *shape)


@pytest.mark.parametrize("net, path", list(TARGETS))
def test_the_default_holds_less_than_its_float_twin_on_every_path(net, path):
    twin, model, x = _pair(net)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=path == "bf16"):
        float_bytes = memory.saved_bytes(twin, x, mode="exact").total
        for mode, target in TARGETS[(net, path)].items():
            ratio = memory.saved_bytes(model, x, mode=mode).total / float_bytes
            assert ratio <= target, (net, path, mode, round(ratio, 3))
        assert memory.saved_bytes(model, x, mode="exact").total > float_bytes  # exact keeps z and the outputs


def test_saved_bytes_counts_each_storage_once_per_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), ftp.Sign(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    x = torch.randn(4, 3, 8, 8)
    exact = memory.saved_bytes(model, x, mode="exact")
    elements = 4 * 8 * 6 * 6
    # conv: its input is the model's input (not counted) and its weight (a parameter): nothing
    assert exact.by_module == {"1": elements * 4 + 2 * 8 * 4, "2": elements * 4, "4": elements * 4}
    assert exact.total == sum(exact.by_module.values())
    packed = memory.saved_bytes(model, x)  # the default mode
    assert packed.mode == "packed" and packed.by_module == {"1": elements * 4 + 2 * 8 * 4, "4": elements // 8}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    memory.saved_bytes(model, x, mode="recompute")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN statistics restored
    assert "forward" not in model.__dict__  # recompute prepared for the count only


def test_saved_bytes_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="'float'.*exact, packed, recompute"):
        memory.saved_bytes(nn.Linear(2, 2), torch.randn(1, 2), mode="float")


@pytest.mark.parametrize("mode", memory.MEMORY_MODES)
def test_bf16_mixed_training_runs_in_every_memory_mode_and_logs_saved_mb(mode):
    torch.manual_seed(0)
    model = TinyNet(hidden=16, batchnorm=True)
    callback = ftp.FTPropCallback("sign", memory=mode, log_every_n_steps=1)
    trainer = make_trainer(max_steps=3, precision="bf16-mixed", callbacks=[callback])
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, make_loader(batch_size=16))
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    saved = float(trainer.callback_metrics["ftprop/saved_MB"])
    assert saved > 0


def test_the_logged_saved_mb_shows_the_win_of_the_mode():
    found = {}
    for mode in ("exact", "packed"):
        torch.manual_seed(0)
        model = TinyNet(hidden=256, batchnorm=True)
        trainer = make_trainer(max_steps=1, callbacks=[ftp.FTPropCallback("sign", memory=mode, log_every_n_steps=1)])
        trainer.fit(model, make_loader(batch_size=32))
        found[mode] = float(trainer.callback_metrics["ftprop/saved_MB"])
    assert found["packed"] < 0.5 * found["exact"], found
