"""Resume from a checkpoint taken in the middle of an epoch: the same final parameters as without the stop.

convnet4 on the embedded Fashion-MNIST through the package's data module (whose loaders are torchdata
``StatefulDataLoader``s), one process. The 2-rank DDP case runs under SLURM in tests/test_slurm.py.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_ftprop as ftp
from lightning_ftprop.cli import main
from lightning_ftprop.data import EmbeddedFashionMNISTDataModule

STEPS, STOP = 6, 3  # an epoch of the embedded subset is 750 steps at batch 16: both are mid-epoch


def _fit(root, variant: str, memory: str, ckpt_path=None, save_every=None, weights_only=None):
    """Train to STEPS; returns the module (its parameters are the final ones)."""
    seed_everything(7)
    spec = {"activation": "sign", "rule": "soft_hinge", "memory": memory, "log_every_n_steps": 2}
    callbacks = []
    if variant == "mixin":
        model = ftp.ImageClassifier("convnet4", in_channels=1, ftprop=spec)
    else:
        model = ftp.ImageClassifier("convnet4", activation="relu", in_channels=1)
        callbacks.append(ftp.FTPropCallback(**spec))
    if save_every:
        callbacks.append(
            ModelCheckpoint(dirpath=root, every_n_train_steps=save_every, save_top_k=-1, filename="{step}")
        )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(save_every),
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(model, EmbeddedFashionMNISTDataModule(batch_size=16), ckpt_path=ckpt_path, weights_only=weights_only)
    assert trainer.global_step == STEPS
    return model


def _bits(model) -> dict:
    return {name: p.detach().clone().view(torch.int32) for name, p in model.named_parameters()}


def _assert_bitwise_equal(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs bitwise"


@pytest.mark.parametrize("variant", ["mixin", "callback"])
def test_mid_epoch_checkpoint_resumes_to_bitwise_equal_parameters(tmp_path, variant):
    uninterrupted = _bits(_fit(tmp_path, variant, "packed", save_every=STOP))
    checkpoint = tmp_path / f"step={STOP}.ckpt"
    loader_state = torch.load(checkpoint, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state[0]["_num_yielded"] == STOP  # the position in the epoch travels with the checkpoint
    resumed = _bits(_fit(tmp_path / "resumed", variant, "packed", ckpt_path=checkpoint))
    _assert_bitwise_equal(resumed, uninterrupted)


def test_resume_under_another_memory_mode_ends_bitwise_equal(tmp_path):
    """memory= changes how a step is stored, not what it computes, so a run may resume under another mode."""
    uninterrupted = _bits(_fit(tmp_path, "mixin", "packed", save_every=STOP))
    resumed = _bits(_fit(tmp_path / "resumed", "mixin", "recompute", ckpt_path=tmp_path / f"step={STOP}.ckpt"))
    _assert_bitwise_equal(resumed, uninterrupted)


def test_cli_resume_with_another_spec_or_memory_on_the_command_line_is_refused(tmp_path):
    """LightningCLI would quietly replace the command line's model arguments by the checkpoint's."""
    common = [
        "--config",
        "convnet4_fashion_mnist_sign_soft_hinge",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--data.batch_size=16",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    assert main(["fit", *common, "--trainer.max_steps=2"]) == 0
    (last,) = tmp_path.rglob("last.ckpt")
    resume = ["fit", *common, "--trainer.max_steps=3", f"--ckpt_path={last}"]
    expected = r"checkpoint was trained with another ftprop spec .*\(checkpoint != command line\): "
    with pytest.raises(ValueError, match=expected + "rule: 'soft_hinge' != 'sste'"):
        main([*resume, "--model.ftprop.rule=sste"])
    with pytest.raises(ValueError, match=expected + "memory: 'packed' != 'recompute'"):
        main([*resume, "--model.ftprop.memory=recompute"])
    assert main(resume) == 0  # the checkpoint's own settings resume


def _plain(value, where: str = "checkpoint") -> None:
    """``value`` holds only what ``torch.load(weights_only=True)`` accepts: tensors and primitives."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{where}: key {key!r}"
            _plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, (str, int, float, bool, torch.Tensor)), f"{where}: {type(value)}"


@pytest.mark.parametrize("variant", ["mixin", "callback"])
def test_weights_only_resume_ends_bitwise_equal(tmp_path, variant):
    """The callback's and the mixin's checkpoint state is plain data, so a weights_only resume works."""
    uninterrupted = _bits(_fit(tmp_path, variant, "packed", save_every=STOP))
    checkpoint = tmp_path / f"step={STOP}.ckpt"
    loaded = torch.load(checkpoint, weights_only=True)  # raises on anything but tensors and primitives
    ftprop_state = {"ftprop": loaded["callbacks"].get("ftprop")}
    ftprop_state["hyper_parameters"] = loaded.get("hyper_parameters")
    _plain(ftprop_state)
    assert any(ftprop_state.values())
    resumed = _bits(_fit(tmp_path / "resumed", variant, "packed", ckpt_path=checkpoint, weights_only=True))
    _assert_bitwise_equal(resumed, uninterrupted)


def test_load_from_checkpoint_with_weights_only_gives_back_threshold_units(tmp_path):
    model = _fit(tmp_path, "mixin", "packed", save_every=STOP)
    loaded = ftp.ImageClassifier.load_from_checkpoint(tmp_path / f"step={STOP}.ckpt", weights_only=True)
    assert [type(m).__name__ for m in loaded.modules() if isinstance(m, ftp.ThresholdUnit)] == ["Sign"] * 3
    assert loaded.ftprop_spec == model.ftprop_spec
