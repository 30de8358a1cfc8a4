"""A test-only Lightning callback for the SLURM jobs of tests/test_slurm.py, configured by environment.

``FTPROP_PROBE_DIR``: rank zero appends ``<event> <unix time> <SLURM_RESTART_COUNT> <global_step>``
lines to ``progress.txt`` there (``start`` once training starts, ``step`` after every optimizer step)
and, when training reaches ``max_steps``, writes the model's parameters to ``final.pt``.
Every rank appends ``<global rank> <pid>`` to ``pids`` there when training starts.
``FTPROP_PROBE_SLEEP`` (seconds, default 0): every rank sleeps this long after each step from
``FTPROP_PROBE_SLOW_AFTER`` on, so the test has time to preempt the job. Sleeping changes no number.
"""

from __future__ import annotations

import os
import time

import torch
from lightning.pytorch import Callback


class Probe(Callback):
    def __init__(self) -> None:
        self.out = os.environ["FTPROP_PROBE_DIR"]
        self.sleep = float(os.environ.get("FTPROP_PROBE_SLEEP", "0"))
        self.slow_after = int(os.environ.get("FTPROP_PROBE_SLOW_AFTER", "0"))

    def _note(self, trainer, event: str) -> None:
        if trainer.is_global_zero:
            restart = os.environ.get("SLURM_RESTART_COUNT", "0")
            with open(os.path.join(self.out, "progress.txt"), "a") as f:
                f.write(f"{event} {time.time():.3f} {restart} {trainer.global_step}\n")

    def on_train_start(self, trainer, pl_module) -> None:
        with open(os.path.join(self.out, "pids"), "a") as f:  # every rank: "<global rank> <pid>"
            f.write(f"{trainer.global_rank} {os.getpid()}\n")
        self._note(trainer, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._note(trainer, "step")
        if self.sleep and trainer.global_step >= self.slow_after:
            time.sleep(self.sleep)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step == trainer.max_steps:
            params = {name: p.detach().clone() for name, p in pl_module.named_parameters()}
            torch.save(params, os.path.join(self.out, "final.pt"))
