"""StepBoundaryRequeue outside SLURM: it validates its argument and otherwise stays out of the way.

Under SLURM (checkpoint at a step boundary, requeue, resume) it runs in tests/test_slurm.py.
"""

from __future__ import annotations

import signal

import pytest
from lightning_helpers import TinyNet, make_loader, make_trainer

from lightning_ftprop.requeue import StepBoundaryRequeue


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_check_every_n_steps_is_refused_naming_the_value(value):
    with pytest.raises(ValueError, match=f"check_every_n_steps must be an int >= 1, got {value!r}"):
        StepBoundaryRequeue(check_every_n_steps=value)


def test_without_slurm_it_installs_no_signal_handler_and_training_runs(monkeypatch):
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    before = signal.getsignal(signal.SIGUSR1)
    callback = StepBoundaryRequeue()
    trainer = make_trainer(max_steps=3, callbacks=[callback])
    trainer.fit(TinyNet(), make_loader())
    assert trainer.global_step == 3 and callback._signum is None
    assert signal.getsignal(signal.SIGUSR1) == before


@pytest.mark.parametrize("value", ["SIGKILL", "nope", 9, 0, ""])
def test_a_requeue_signal_it_cannot_take_is_refused_listing_the_allowed(value):
    with pytest.raises(ValueError, match=r"signal must be one of SIGUSR1, SIGUSR2, SIGTERM.*got"):
        StepBoundaryRequeue(signal=value)


@pytest.mark.parametrize("value", ["SIGTERM", "term", 15, signal.SIGTERM])
def test_the_requeue_signal_is_taken_by_name_or_number(value):
    assert StepBoundaryRequeue(signal=value).signal == signal.SIGTERM
