"""Subprocesses bounded by the work they do, not by the wall clock.

A pipeline that takes 60 s on a quiet machine takes ten times longer on a loaded one;
a wall-clock timeout that fits one breaks the other. ``run_bounded`` instead limits
the CPU time the command and all its children use (a runaway fails however fast the
machine is) and its stalls (no CPU time used by the whole process tree for
``stall_s``: a hang, e.g. waiting on a lock or a server that never answers).
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil


class BoundExceeded(AssertionError):
    pass


def _tree_cpu_seconds(root: psutil.Process, seen: dict[int, float]) -> float:
    """CPU seconds of the tree so far; children that already exited keep their last reading."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return sum(seen.values())


def run_bounded(cmd: list[str], cwd: str | Path, env: dict[str, str], cpu_s: float = 900,
                stall_s: float = 300, poll_s: float = 1.0) -> subprocess.CompletedProcess:
    """Run ``cmd`` with output captured; kill its process group and raise BoundExceeded if
    the tree uses more than ``cpu_s`` CPU-seconds or none at all for ``stall_s`` seconds."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        root, seen = psutil.Process(proc.pid), {}
        used, last_progress, last_used = 0.0, time.monotonic(), -1.0
        reason = None
        while proc.poll() is None:
            time.sleep(poll_s)
            used = _tree_cpu_seconds(root, seen)
            now = time.monotonic()
            if used > last_used + 0.01:
                last_used, last_progress = used, now
            if used > cpu_s:
                reason = f"used more than its budget of {cpu_s:.0f} CPU-seconds"
            elif now - last_progress > stall_s:
                reason = f"used no CPU for {stall_s:.0f} s (stalled at {used:.0f} CPU-seconds)"
            if reason:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                break
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if reason:
        raise BoundExceeded(f"{' '.join(map(str, cmd))} {reason}:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
