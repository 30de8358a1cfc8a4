"""``AtomicCheckpointIO``: a checkpoint file is either the old one or the complete new one, never half written.

Lightning's ``TorchCheckpointIO`` serialises the checkpoint in memory and writes it through an fsspec
transaction: the bytes go to a temporary file made by ``tempfile.mkstemp()`` -- in ``$TMPDIR``, usually
``/tmp`` -- which is then moved onto the target with ``shutil.move``. When ``$TMPDIR`` and the
checkpoint folder are on one file system that move is a rename, which is atomic. On a cluster they
rarely are (node-local ``/tmp``, checkpoints on a shared file system): the move becomes a copy onto
``last.ckpt`` itself, and a job killed during the copy (preempted past the grace time, out of memory,
node failure) leaves a truncated ``last.ckpt`` that replaces the good one.

This plugin writes where the target lives::

    fd, tmp = mkstemp(dir=folder of path)       # same file system as the target
    torch.save(checkpoint, tmp); fsync(tmp)
    os.replace(tmp, path)                        # atomic rename (POSIX)

A process killed at any point leaves ``path`` as it was (the previous checkpoint, or absent) plus, at
worst, a stray ``.<name>.*.tmp`` file next to it, which the next save of the same path removes.
Remote paths (``s3://``, ...) are handed to ``TorchCheckpointIO`` unchanged.

    Trainer(plugins=[AtomicCheckpointIO()])                 # or, in a LightningCLI config:
    trainer: {plugins: [lightning_ftprop.checkpoint_io.AtomicCheckpointIO]}
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from typing import Any, Dict, Optional

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are a write to a sibling temp file and an atomic rename.

    Pass it to the Trainer as a plugin: ``Trainer(plugins=[AtomicCheckpointIO()])``.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "last.ckpt")
    >>> io = AtomicCheckpointIO()
    >>> io.save_checkpoint({"global_step": 5}, path)
    >>> io.load_checkpoint(path)["global_step"], os.listdir(folder)  # no temp file is left beside it
    (5, ['last.ckpt'])
    >>> io.remove_checkpoint(path); os.rmdir(folder)
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        fs, local = url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}; "
                "write a custom CheckpointIO plugin to use them"
            )
        folder, name = os.path.split(os.path.abspath(local))
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)  # left by a process killed while writing this checkpoint
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a checkpoint gets the usual mode
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(folder, name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
