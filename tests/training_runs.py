"""Training stages run as real processes: killed with SIGKILL at a chosen step, rerun, and
their final checkpoints and DVCLive histories compared with an uninterrupted run's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# The stage's command, stopped right after the update that reaches global step STOP_AT_STEP
# (before that step's checkpoint, if it has one): SIGKILLed by itself, or, with PAUSE_FLAG and
# PAUSE_RELEASE set, paused (holding its lock) from writing the flag until the release exists.
STOP_AT = """
import os, signal, sys, time
from pathlib import Path
from tasks.training import trainer
original = trainer.ResumeState.on_train_batch_end
def on_train_batch_end(self, pl_trainer, *args):
    original(self, pl_trainer, *args)
    if pl_trainer.global_step == int(os.environ["STOP_AT_STEP"]):
        if "PAUSE_FLAG" not in os.environ:
            os.kill(os.getpid(), signal.SIGKILL)
        Path(os.environ["PAUSE_FLAG"]).write_text("paused")
        while not Path(os.environ["PAUSE_RELEASE"]).exists():
            time.sleep(0.05)
trainer.ResumeState.on_train_batch_end = on_train_batch_end
from tasks.cli import main
sys.exit(main(sys.argv[1:]))
"""


def env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def run_stage(cwd: Path, *args: str, kill_at_step: int | None = None) -> subprocess.CompletedProcess:
    """``taming ARGS`` in ``cwd``; with ``kill_at_step`` it dies by SIGKILL at that global step."""
    if kill_at_step is None:
        cmd = [sys.executable, "-m", "tasks.cli", *args]
    else:
        cmd = [sys.executable, "-c", STOP_AT, *args]
    done = subprocess.run(cmd, cwd=cwd, env=env(STOP_AT_STEP=str(kill_at_step)), capture_output=True, text=True,
                          timeout=900)
    if kill_at_step is not None:
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    else:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_paused(cwd: Path, *args: str, step: int, flag: Path, release: Path) -> subprocess.Popen:
    """``taming ARGS`` in a subprocess, returned once it is paused at global step ``step``."""
    proc = subprocess.Popen([sys.executable, "-c", STOP_AT, *args], cwd=cwd,
                            env=env(STOP_AT_STEP=str(step), PAUSE_FLAG=str(flag), PAUSE_RELEASE=str(release)))
    deadline = time.time() + 600
    while not flag.exists():
        assert proc.poll() is None, "the stage ended before its pause"
        assert time.time() < deadline
        time.sleep(0.1)
    return proc


def tensors(obj, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a checkpoint, by its path: weights, optimiser states, RNG states."""
    if torch.is_tensor(obj):
        return {path: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found = {}
    for key, value in items:
        found.update(tensors(value, f"{path}/{key}"))
    return found


def differing_tensors(a: Path, b: Path) -> list[str]:
    ta, tb = (tensors(torch.load(p, weights_only=True, map_location="cpu")) for p in (a, b))
    assert ta.keys() == tb.keys()
    return sorted(k for k in ta if not torch.equal(ta[k], tb[k]))


def history(dvclive: Path) -> dict[str, list[tuple[int, str]]]:
    """Each DVCLive metric's (step, value) rows, timestamps left out."""
    rows = {}
    for tsv in sorted((dvclive / "plots" / "metrics").rglob("*.tsv")):
        header, *lines = tsv.read_text().splitlines()
        names = header.split("\t")
        rows[str(tsv.relative_to(dvclive))] = [(int(r.split("\t")[names.index("step")]), r.split("\t")[-1])
                                               for r in lines]
    return rows
