"""The memory contract on a GPU's own kernels: cuDNN's BatchNorm, CUDA autocast, inductor's CUDA code.

Skipped without CUDA (CI has none). ``scripts/gpu_check.py tests`` runs it on a lent GPU; the figures and
the outcome of the last run are in benchmarks/RESULTS.md, section 5.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from conftest import assert_grads_close
from torch import nn

import lightning_ftprop as ftp
from lightning_ftprop import memory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RULES = ftp.available_rules()
BF16 = 2.0**-8  # bfloat16's unit roundoff


def _convnet(rule: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, bias=False),
        nn.BatchNorm2d(16),
        ftp.Sign(rule),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3),
        nn.BatchNorm2d(16),
        ftp.Sign(rule),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 4),
    ).cuda()


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(32, 3, 16, 16, generator=g).cuda(), (torch.arange(32) % 4).cuda()


def _grads(model: nn.Module, mode: str, bf16: bool) -> dict:
    x, y = _data()
    if mode == "recompute":
        memory.recompute(model)
    for _ in range(2 if mode == "recompute" else 1):  # recompute's first forward finds the segments
        model.zero_grad(set_to_none=True)
        with memory.packed() if mode != "exact" else contextlib.nullcontext():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
    return {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", ["packed", "recompute"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gpu_packed_and_recompute_gradients_match_exact(rule, mode, bf16):
    torch.backends.cudnn.deterministic = True  # the contract, not cuDNN's atomics, is under test
    try:
        model = _convnet(rule)
        want = _grads(copy.deepcopy(model), "exact", bf16)
        got = _grads(copy.deepcopy(model), mode, bf16)
    finally:
        torch.backends.cudnn.deterministic = False
    assert_grads_close(got, want, rtol=BF16 if bf16 else 1e-5)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gpu_units_after_cudnn_batchnorm_keep_nothing(bf16):
    """z is rebuilt from cuDNN's BatchNorm state (bitwise or within rounding): the smooth rule keeps nothing."""
    model = _convnet("soft_hinge")
    kept = []
    for m in model.modules():
        if isinstance(m, ftp.ThresholdUnit):
            m.register_forward_hook(lambda m, i, out: kept.append(out.grad_fn.kept[0]))
    with memory.packed(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        model(_data()[0])
    assert kept == ["nothing", "nothing"]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_gpu_saved_bytes_of_resnet18_packed_are_below_the_float_twin(bf16):
    import torchvision

    torch.manual_seed(0)
    twin = torchvision.models.resnet18(num_classes=10).cuda()
    model = copy.deepcopy(twin)
    ftp.convert(model, "sign", "soft_hinge")
    x = torch.randn(8, 3, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        float_bytes = memory.saved_bytes(twin, x, mode="exact").total
        packed_bytes = memory.saved_bytes(model, x, mode="packed").total
    assert packed_bytes < 0.6 * float_bytes, (packed_bytes, float_bytes)


@pytest.mark.skipif(
    not ftp.functional._COMPILE_SUPPORTED, reason="this torch drops a compiled unit's backward (needs >= 2.12)"
)
def test_gpu_compiled_packed_units_keep_bits_and_match_compiled_exact():
    torch._dynamo.reset()
    model = _convnet("soft_hinge")
    exact = torch.compile(copy.deepcopy(model), fullgraph=True)
    packed = torch.compile(copy.deepcopy(model), fullgraph=True)
    want, got = _grads(exact, "exact", False), _grads(packed, "packed", False)
    assert_grads_close(got, want, rtol=1e-5)
    x = _data()[0]
    assert memory.saved_bytes(packed, x, mode="packed").total < memory.saved_bytes(exact, x, mode="exact").total


def test_gpu_lightning_bf16_mixed_trains_in_every_memory_mode():
    import lightning.pytorch as pl
    from lightning_helpers import TinyNet, make_loader

    for mode in ("exact", "packed", "recompute"):
        torch.manual_seed(0)
        callback = ftp.FTPropCallback("sign", memory=mode, log_every_n_steps=1)
        trainer = pl.Trainer(
            accelerator="gpu",
            devices=1,
            precision="bf16-mixed",
            max_steps=3,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        model = TinyNet(batchnorm=True)
        trainer.fit(model, make_loader())
        assert trainer.global_step == 3 and callback.latest, mode
        assert all(torch.isfinite(p).all() for p in model.parameters()), mode
