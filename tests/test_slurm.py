"""Preemption on a real one-node SLURM cluster: requeue, resume, and the same final parameters.

The module starts the cluster with ``scripts/slurm/local_cluster.sh start`` (as root; it installs
slurm-wlm and munge with apt when missing) and stops it at the end, unless it was running before.
``pytest -m "not slurm"`` leaves these tests out. Every job is the production script
``scripts/slurm/train.sbatch``: convnet4 on the embedded Fashion-MNIST, 2 tasks under ``srun``, gloo DDP,
one thread per rank. The tests skip with one line where the cluster cannot start (not root, no apt);
with ``FTPROP_REQUIRE_SLURM=1`` (set by ``.ci/run``) they fail instead.

``tests/slurm_probe.py`` is added to each job: it records the global step and time after every step,
slows steps down so the test can preempt in the middle of the run, and saves the final parameters.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm" / "train.sbatch"
CLUSTER = ROOT / "scripts" / "slurm" / "local_cluster.sh"
STEPS = 12  # optimizer steps per job (global batch 64: mid-epoch, the epoch has 187 steps)
LOG_EVERY = 2  # the diagnostics gather and log at global steps 0, 2, 4, ...
PREEMPT_AFTER = 4  # the test sends SIGUSR1 once the job has trained this many steps
_DIST_VARS = ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")


def _unavailable(reason: str):
    if os.environ.get("FTPROP_REQUIRE_SLURM"):
        pytest.fail(f"FTPROP_REQUIRE_SLURM is set but the SLURM cluster cannot start: {reason}")
    pytest.skip(f"SLURM cluster cannot start here: {reason}")


@pytest.fixture(scope="module")
def cluster():
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _unavailable("the one-node cluster runs its daemons as root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        _unavailable("slurm-wlm is not installed and apt-get is missing")
    status = subprocess.run([str(CLUSTER), "status"], capture_output=True, text=True, timeout=60).stdout
    was_running = "running: slurmctld" in status
    proc = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        _unavailable(lines[-1])
    yield
    if not was_running:  # a cluster someone started by hand stays up
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


# --- jobs ----------------------------------------------------------------------------------------


def _job_args(variant: str, memory: str, logs: Path) -> Tuple[str, List[str]]:
    """``(CONFIG, extra fit arguments)``: the mixin (ImageClassifier's ftprop) or the callback on a float model."""
    common = [
        f"--trainer.max_steps={STEPS}",
        "--data.batch_size=32",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={logs}",
        "--trainer.callbacks+=slurm_probe.Probe",
    ]
    if variant == "mixin":
        ftprop = [f"--model.ftprop.memory={memory}", f"--model.ftprop.log_every_n_steps={LOG_EVERY}"]
        return "convnet4_fashion_mnist_sign_soft_hinge", common + ftprop
    callback = [
        "--trainer.callbacks+=lightning_ftprop.FTPropCallback",
        "--trainer.callbacks.activation=sign",
        "--trainer.callbacks.rule=soft_hinge",
        f"--trainer.callbacks.memory={memory}",
        f"--trainer.callbacks.log_every_n_steps={LOG_EVERY}",
    ]
    return "convnet4_fashion_mnist_relu", common + callback


def submit(
    work: Path, variant: str, memory: str, sleep: float = 0.0, slow_after: int = PREEMPT_AFTER - 1, **env_vars: str
) -> str:
    """Submit ``train.sbatch`` for the tests' workload from ``work``; returns the job id.

    With ``sleep``, every rank sleeps that long after each step from ``slow_after`` on (see slurm_probe.py).
    """
    work.mkdir(parents=True, exist_ok=True)
    config, args = _job_args(variant, memory, work / "logs")
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS and not k.startswith("SLURM_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        CONFIG=config,
        ACCELERATOR="cpu",
        NUM_WORKERS="0",
        RUN_DIR=str(work / "run"),
        FTPROP=f"{sys.executable} -m lightning_ftprop.cli",
        FTPROP_PROBE_DIR=str(work),
        FTPROP_PROBE_SLEEP=str(sleep),
        FTPROP_PROBE_SLOW_AFTER=str(slow_after),
        **env_vars,
    )
    resources = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=0"]
    command = ["sbatch", "--parsable", f"--chdir={work}", f"--output={work / 'slurm.out'}", "--time=15"]
    proc = subprocess.run(
        command + resources + [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_state(job: str) -> Tuple[str, str]:
    """``(JobState, Reason)`` from ``scontrol show job`` (finished jobs stay listed for MinJobAge, 300 s)."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    state = re.search(r"JobState=(\S+)", out)
    reason = re.search(r"Reason=(\S+)", out)
    return (state.group(1) if state else "UNKNOWN", reason.group(1) if reason else "")


def wait_for(predicate, timeout: float, what: str, work: Path, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    log = (work / "slurm.out").read_text()[-3000:] if (work / "slurm.out").exists() else "(no log)"
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; job log:\n{log}")


def wait_done(job: str, work: Path, timeout: float = 300.0) -> str:
    return wait_for(
        lambda: (s := job_state(job)[0]) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") and s,
        timeout,
        f"job {job} to end",
        work,
    )


def progress(work: Path) -> List[Tuple[str, float, int, int]]:
    """``(event, time, restart, global_step)`` rows written by the probe."""
    path = work / "progress.txt"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event, t, restart, step = line.split()
        rows.append((event, float(t), int(restart), int(step)))
    return rows


def diagnostics_rows(work: Path) -> Dict[int, Dict[str, str]]:
    """``{global step: {ftprop/<layer>/... key: value}}`` from every ``metrics.csv`` the job's CSVLogger wrote.

    ``ftprop/saved_MB`` (the memory part's, logged in its own row) is left out: after a resume, the first
    ``recompute`` step holds more than the uninterrupted one (it finds its segments again).
    """
    rows: Dict[int, Dict[str, str]] = {}
    for path in sorted((work / "logs").rglob("metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                values = {k: v for k, v in row.items() if k.startswith("ftprop/") and k != "ftprop/saved_MB" and v}
                if values:
                    assert int(row["step"]) not in rows, f"step {row['step']} logged twice ({path})"
                    rows[int(row["step"])] = values
    return rows


def final_params(work: Path) -> Dict[str, torch.Tensor]:
    return torch.load(work / "final.pt", map_location="cpu", weights_only=True)


def assert_bitwise_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].contiguous(), b[name].contiguous()
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.equal(x.view(torch.int32), y.view(torch.int32)), f"{name} differs bitwise"


# --- the uninterrupted reference: the plain 2-task job ------------------------------------------------


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("reference")
    job = submit(work, "mixin", "packed")
    state = wait_done(job, work)
    assert state == "COMPLETED", (work / "slurm.out").read_text()[-3000:]
    return work


def test_plain_two_task_job_trains_two_gloo_ranks_to_max_steps(reference):
    log = (reference / "slurm.out").read_text()
    assert "distributed_backend=gloo" in log and "MEMBER: 2/2" in log
    steps = [step for event, _, restart, step in progress(reference) if event == "step"]
    assert steps == list(range(1, STEPS + 1))
    assert sorted(diagnostics_rows(reference)) == list(range(0, STEPS, LOG_EVERY))
    assert not list((reference / "run").glob("hpc_ckpt_*.ckpt"))  # never preempted


# --- preemption -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, memory", [("mixin", "packed"), ("mixin", "recompute"), ("callback", "packed"), ("callback", "recompute")]
)
def test_preempted_job_requeues_resumes_and_ends_bitwise_equal_to_uninterrupted(reference, tmp_path, variant, memory):
    _preempt_requeue_and_compare(reference, tmp_path, variant, memory, "USR1")


def test_requeue_signal_set_once_in_sbatch_signal_is_sigterm_for_slurm_and_lightning(reference, tmp_path):
    """``SBATCH_SIGNAL=TERM@90``: the one place the requeue signal is set (scripts/slurm/train.sbatch). A
    SIGTERM then checkpoints at the step boundary and requeues, where Lightning alone would stop the ranks."""
    _preempt_requeue_and_compare(reference, tmp_path, "callback", "packed", "TERM", SBATCH_SIGNAL="TERM@90")
    assert "requeue signal SIGTERM" in (tmp_path / "slurm.out").read_text()


def _preempt_requeue_and_compare(reference, tmp_path, variant, memory, signal_name, **env_vars):
    job = submit(tmp_path, variant, memory, sleep=0.5, **env_vars)
    wait_for(
        lambda: any(e == "step" and s >= PREEMPT_AFTER for e, _, _, s in progress(tmp_path)),
        240,
        f"{PREEMPT_AFTER} steps",
        tmp_path,
    )
    signalled = time.time()
    subprocess.run(["scancel", f"--signal={signal_name}", job], check=True, timeout=30)
    # SLURM holds a requeued batch job for 120 s (its BeginTime); lift the hold to keep the test short
    wait_for(lambda: job_state(job) == ("PENDING", "BeginTime"), 120, "the requeue", tmp_path, poll=0.1)
    requeued = time.time()
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    assert wait_done(job, tmp_path) == "COMPLETED", (tmp_path / "slurm.out").read_text()[-3000:]

    rows = progress(tmp_path)
    first = [s for e, _, r, s in rows if e == "step" and r == 0]
    (resume,) = [(t, s) for e, t, r, s in rows if e == "start" and r == 1]
    second = [s for e, _, r, s in rows if e == "step" and r == 1]
    saved = max(first)
    assert PREEMPT_AFTER <= saved < STEPS  # checkpointed at the step boundary after the signal
    assert resume[1] == saved and second == list(range(saved + 1, STEPS + 1))  # resumed at the next step
    hpc = sorted(p.name for p in (tmp_path / "run").glob("hpc_ckpt_*.ckpt"))
    assert hpc == ["hpc_ckpt_1.ckpt"]

    assert_bitwise_equal(final_params(tmp_path), final_params(reference))
    # the diagnostics' step counter continues: the two runs' logs add up to the uninterrupted run's
    rows_a, rows_b = diagnostics_rows(tmp_path), diagnostics_rows(reference)
    assert rows_a == rows_b
    print(
        f"\n{variant}/{memory}: {signal_name} -> requeued (PENDING) {requeued - signalled:.1f} s; "
        f"hold lifted -> training resumed {resume[0] - requeued:.1f} s; saved at step {saved}"
    )


# --- faults ------------------------------------------------------------------------------------------


def test_dead_rank_fails_the_job_within_a_minute_naming_the_task(cluster, tmp_path):
    job = submit(tmp_path, "mixin", "packed", sleep=1.0, slow_after=0)
    wait_for(lambda: any(e == "step" and s >= 2 for e, _, _, s in progress(tmp_path)), 240, "2 steps", tmp_path)
    pids = dict(line.split() for line in (tmp_path / "pids").read_text().splitlines())
    killed = time.monotonic()
    os.kill(int(pids["1"]), signal.SIGKILL)
    state = wait_done(job, tmp_path, timeout=60)
    elapsed = time.monotonic() - killed
    log = (tmp_path / "slurm.out").read_text()
    assert state == "FAILED", log[-3000:]
    assert re.search(r"task 1: Killed", log), log[-3000:]
    print(f"\nrank 1 SIGKILLed -> job FAILED after {elapsed:.1f} s")
