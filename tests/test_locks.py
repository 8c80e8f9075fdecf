"""tasks/runtime/locks.py with real processes: a refusal names the holder, a SIGKILLed holder
blocks nothing, and a holder's forked children do not keep its lock alive."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.runtime import locks

REPO = Path(__file__).resolve().parents[1]

# Takes the lock of argv[1], forks a child that lives on (as a DataLoader worker would),
# writes argv[2] when both are up, then waits to be killed.
HOLDER = """
import os, sys, time
from pathlib import Path
from tasks.runtime import locks
with locks.hold(Path(sys.argv[1])):
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    Path(sys.argv[2]).write_text(str(child))
    time.sleep(120)
"""


def _start_holder(tmp_path: Path, output: Path) -> tuple[subprocess.Popen, int]:
    """The holder process and the pid of its forked child."""
    flag = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(output), str(flag)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while not flag.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    return proc, int(flag.read_text())


def test_a_second_holder_is_refused_naming_the_first_until_it_is_killed(tmp_path):
    output = tmp_path / "data" / "out"
    proc, child = _start_holder(tmp_path, output)
    try:
        with pytest.raises(locks.Busy) as refused:
            with locks.hold(output):
                pass
        message = str(refused.value)
        assert message.startswith(f"{output} is being written by another run: pid {proc.pid} on "
                                  f"{socket.gethostname()} (-c {output} ")
        assert ", since 20" in message and f"lock file {tmp_path / 'data' / '.out.lock'}" in message
        with locks.hold(output, "train", "shard-1-of-2"):   # another part of the output is free
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    try:
        # SIGKILL released the lock although the holder's forked child still runs; its record stays
        os.kill(child, 0)
        assert json.loads((tmp_path / "data" / ".out.lock").read_text())["pid"] == proc.pid
        with locks.hold(output):
            assert json.loads((tmp_path / "data" / ".out.lock").read_text())["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_lock_file_lives_beside_the_output_never_inside():
    assert locks.beside(Path("data/imagenet")) == Path("data/.imagenet.lock")
    assert locks.beside(Path("data/tokens"), "train", "shard-0-of-4") == Path("data/.tokens.train.shard-0-of-4.lock")
