"""``StepBoundaryRequeue``: take SLURM's requeue signal between two training steps, on every rank at once.

On SLURM, ``#SBATCH --signal=USR1@90`` (or ``scancel --signal=USR1 JOB``) sends ``SIGUSR1`` to every
task of the job, and Lightning's ``SLURMEnvironment(auto_requeue=True)`` answers it: it saves
``hpc_ckpt_<n>.ckpt`` in ``default_root_dir`` and runs ``scontrol requeue``; the requeued job finds
that checkpoint and resumes from it. Lightning does both *inside the signal handler*, that is, at
whatever point each rank's main thread is when the signal lands: in the middle of a forward, between
the backward and the optimizer step, or inside a collective. The checkpoint may then hold a
half-done step, and its barrier may meet another rank's gradient all-reduce.

This callback defers the handling to the end of a training step::

    step k:  forward, backward (DDP all-reduce), optimizer step, on_train_batch_end
                                                                  |
             flag = signal seen on this rank (0/1);  flag = sum over ranks (one all-reduce)
             flag > 0  ->  Lightning's own handler: save hpc_ckpt, scontrol requeue;  trainer.should_stop

so every rank checkpoints at the same step, with the optimizer step complete, and the resumed run
continues with step k+1 (Lightning restores the loops' progress and, with a stateful data loader, the
position in the epoch). It changes nothing else: without SLURM, or with ``auto_requeue=False``, it
does nothing. With gradient accumulation it waits for the step that updates the weights. A signal
that arrives during validation is acted on at the end of the next training step: leave a
``--signal=USR1@<seconds>`` margin longer than a validation pass.

The signal: ``signal=None`` (the default) takes the one ``SLURMEnvironment(requeue_signal=...)`` says
(``SIGUSR1`` unless set), so the environment is the one place to change it; ``signal="SIGTERM"`` (or
``"TERM"``, ``15``, ``signal.SIGTERM``) sets it here. ``scripts/slurm/train.sbatch`` reads it from
``SBATCH_SIGNAL``, the variable sbatch itself takes ``--signal`` from. Requeueing on ``SIGTERM`` (what SLURM
sends on preemption and ``scancel``) means this callback owns ``SIGTERM`` during training: Lightning's own
``SIGTERM`` handling (stop every rank with ``SIGTERMException``, no checkpoint) is replaced.

Mechanism: in ``setup`` (which Lightning runs before it installs its signal handlers) it installs a
handler for the signal that only records it; Lightning, finding a handler there, leaves it in place,
except for ``SIGTERM``, which Lightning always wraps, so ``on_train_start`` installs it again.
``teardown`` restores the previous handler. The cost is one all-reduce of one integer per
``check_every_n_steps`` steps.
"""

from __future__ import annotations

import signal as _signal
from typing import Any, Optional, Union

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer

__all__ = ["StepBoundaryRequeue"]


class StepBoundaryRequeue(Callback):
    """Checkpoint and requeue a SLURM job at a step boundary when its requeue signal arrives.

    Args:
        check_every_n_steps: look for the signal (one all-reduce across ranks) every this many
            optimizer steps; 1 (the default) reacts at the end of the step in which it arrived.
        signal: the requeue signal: None (the default) for the SLURM environment's ``requeue_signal``,
            or a name (``"SIGTERM"``, ``"TERM"``), number or ``signal.Signals``.

    Raises:
        ValueError: ``check_every_n_steps`` is not a positive int, or ``signal`` names no signal this
            callback can take (the message lists those).

    >>> StepBoundaryRequeue(check_every_n_steps=10).check_every_n_steps
    10
    >>> StepBoundaryRequeue(signal="TERM").signal
    <Signals.SIGTERM: 15>
    >>> StepBoundaryRequeue(check_every_n_steps=0)
    Traceback (most recent call last):
    ...
    ValueError: check_every_n_steps must be an int >= 1, got 0
    """

    def __init__(self, check_every_n_steps: int = 1, signal: Union[None, str, int, _signal.Signals] = None) -> None:
        if isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be an int >= 1, got {check_every_n_steps!r}")
        self.check_every_n_steps = check_every_n_steps
        self.signal: Optional[_signal.Signals] = None if signal is None else _parse_signal(signal)
        self._signum: Optional[int] = None
        self._previous: Any = None
        self._received = False

    def _record(self, signum: int, frame: Any) -> None:
        self._received = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        self._signum = self.signal if self.signal is not None else environment.requeue_signal
        self._received = False
        self._previous = _signal.signal(self._signum, self._record)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._signum is not None and _signal.getsignal(self._signum) != self._record:
            _signal.signal(self._signum, self._record)  # SIGTERM: Lightning wrapped it after setup

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._signum is None or trainer.fit_loop.epoch_loop._should_accumulate():
            return
        if trainer.global_step % self.check_every_n_steps:
            return
        seen = torch.tensor(int(self._received), device=pl_module.device)
        if trainer.world_size > 1:
            seen = trainer.strategy.reduce(seen, reduce_op="sum")
        if int(seen.item()) == 0:
            return
        # every rank is here, after the same optimizer step: Lightning's handler saves hpc_ckpt_<n>.ckpt
        # (a collective save) and rank zero runs `scontrol requeue`
        trainer._signal_connector._slurm_sigusr_handler_fn(self._signum, None)
        trainer.should_stop = True
        self._received = False

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._signum is not None:
            _signal.signal(self._signum, self._previous if self._previous is not None else _signal.SIG_DFL)
            self._signum = self._previous = None


#: The signals a requeue may use: the ones SLURM sends or that users pass to ``--signal``/``scancel --signal``.
REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP", "SIGCONT", "SIGALRM")


def _parse_signal(value: Union[str, int, _signal.Signals]) -> _signal.Signals:
    """``signal.Signals`` for ``"SIGTERM"``, ``"term"``, ``15`` or ``signal.SIGTERM``; ValueError otherwise.

    >>> _parse_signal("usr1"), _parse_signal(15)
    (<Signals.SIGUSR1: 10>, <Signals.SIGTERM: 15>)
    """
    try:
        if isinstance(value, str) and not value.strip().isdigit():
            name = value.strip().upper()
            parsed = _signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        else:
            parsed = _signal.Signals(int(value))
    except (KeyError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.name not in REQUEUE_SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(REQUEUE_SIGNALS)} (a name or number), got {value!r}")
    return parsed
