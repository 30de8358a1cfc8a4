"""AtomicCheckpointIO: a process killed while writing leaves the previous checkpoint whole and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from lightning_helpers import TinyNet, make_loader, make_trainer

from lightning_ftprop.checkpoint_io import AtomicCheckpointIO

# Saves {"step": i, "w": 32 MiB of i} to last.ckpt again and again, printing each completed step.
_WRITER = textwrap.dedent(
    """
    import sys, torch
    from lightning_ftprop.checkpoint_io import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    for step in range(1000):
        io.save_checkpoint({"step": step, "w": torch.full((8 << 20,), float(step))}, path)
        print(step, flush=True)
    """
)


@pytest.mark.slow
def test_kill_during_a_write_leaves_the_previous_checkpoint_loadable_and_no_partial_file(tmp_path):
    path = tmp_path / "last.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "0"  # one complete checkpoint exists
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".last.ckpt.*.tmp")):  # the next write is in progress
            assert time.monotonic() < deadline and proc.poll() is None, "never saw a write in progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    completed = [int(line) for line in proc.stdout.read().split()]
    assert list(tmp_path.glob(".last.ckpt.*.tmp")), "the kill should have landed during a write"
    checkpoint = torch.load(path, weights_only=True)
    last = completed[-1] if completed else 0
    assert checkpoint["step"] == last and torch.equal(checkpoint["w"], torch.full((8 << 20,), float(last)))

    AtomicCheckpointIO().save_checkpoint({"step": -1}, path)  # the next save clears the stray temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(path, weights_only=True) == {"step": -1}


def test_trainer_with_the_plugin_writes_a_checkpoint_it_resumes_from(tmp_path):
    trainer = make_trainer(max_steps=2, plugins=[AtomicCheckpointIO()])
    trainer.fit(TinyNet(), make_loader())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    assert oct(os.stat(tmp_path / "run.ckpt").st_mode & 0o777) == oct(0o666 & ~_umask())
    resumed = make_trainer(max_steps=3, plugins=[AtomicCheckpointIO()])
    resumed.fit(TinyNet(), make_loader(), ckpt_path=tmp_path / "run.ckpt")
    assert resumed.global_step == 3


def test_storage_options_are_refused_for_local_files(tmp_path):
    with pytest.raises(TypeError, match="takes no storage_options, got {'x': 1}"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "a.ckpt", storage_options={"x": 1})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
