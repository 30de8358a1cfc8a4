"""Kill a process while it writes last.ckpt: is the previous checkpoint still loadable afterwards?

    python benchmarks/checkpoint_kill.py [--trials 3] [--mib 256]

For Lightning's ``TorchCheckpointIO`` and for ``lightning_ftprop.checkpoint_io.AtomicCheckpointIO``, a child
process saves ``{"step": i, "w": <MIB MiB>}`` to ``last.ckpt`` in a loop, with ``$TMPDIR`` on another file system
than the checkpoint (``/dev/shm``, tmpfs; checkpoints under the working directory), as on a cluster node with
a local ``/tmp`` and checkpoints on a shared file system. After the first save completes, the parent waits
until the next write is under way (``last.ckpt`` shrinks, or a temporary file appears beside it), sends
SIGKILL, and tries ``torch.load(last.ckpt)``. Prints one line per plugin.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import torch

_WRITER = textwrap.dedent(
    """
    import importlib, sys, torch
    module, name = sys.argv[2].rsplit(".", 1)
    io = getattr(importlib.import_module(module), name)()
    for step in range(1000):
        io.save_checkpoint({"step": step, "w": torch.full((int(sys.argv[3]) << 18,), float(step))}, sys.argv[1])
        print(step, flush=True)
    """
)
PLUGINS = ("lightning.pytorch.plugins.io.TorchCheckpointIO", "lightning_ftprop.checkpoint_io.AtomicCheckpointIO")


def trial(plugin: str, folder: str, tmpdir: str, mib: int) -> str:
    path = os.path.join(folder, "last.ckpt")
    env = dict(os.environ, TMPDIR=tmpdir, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _WRITER, path, plugin, str(mib)], stdout=subprocess.PIPE, env=env)
    assert child.stdout.readline().strip() == b"0"
    full = os.path.getsize(path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shrunk = not os.path.exists(path) or os.path.getsize(path) < full
        if shrunk or glob.glob(os.path.join(folder, ".last.ckpt.*.tmp")):
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    try:
        step = torch.load(path, weights_only=True)["step"]
        return f"loadable (step {step})"
    except Exception as err:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        return f"NOT loadable ({type(err).__name__}; {size} of {full} bytes)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256, help="checkpoint size in MiB")
    args = parser.parse_args()
    for plugin in PLUGINS:
        results = []
        for _ in range(args.trials):
            folder = tempfile.mkdtemp(prefix="ckpt-kill-", dir=os.getcwd())
            tmpdir = tempfile.mkdtemp(prefix="ckpt-kill-tmp-", dir="/dev/shm")
            try:
                results.append(trial(plugin, folder, tmpdir, args.mib))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                shutil.rmtree(tmpdir, ignore_errors=True)
        print(f"{plugin.rsplit('.', 1)[1]}: {'; '.join(results)}")


if __name__ == "__main__":
    main()
