"""One writer per output: a lock file beside each folder a stage writes outside DVC's control.

A stage that writes where DVC does not manage every file (extract's resumable
synsets, an annotation shard, a tokenize shard, a training run's resume folder)
holds ``hold(output)`` while it works. A second run on the same output
is refused at once with a ``Busy`` error naming the holder (pid, host, command,
since when), instead of both writing into one folder.

The lock is ``fcntl.flock`` on the lock file: the kernel releases it when the
holder exits, however it exits (``kill -9`` included), so a dead holder never
blocks the next run; the file itself stays, holding the last holder's record,
which is only ever read to explain a refusal. The lock file lives *beside* the
output (``data/dataset/.image.lock`` for ``data/dataset/image``), never inside it: DVC
hashes, caches and deletes its outputs, and would delete a live lock with them.

Children: a process started with exec (``subprocess``, DDP ranks) does not inherit
the lock (Python opens files close-on-exec); a forked child (DataLoader workers)
closes its copy at once, so a holder's children never keep the lock alive after it.

Filesystems: local filesystems support flock fully. On NFS, Linux emulates
flock with POSIX byte-range locks, which work across machines only when the
server's lock manager runs (NFSv4, or NFSv3 with lockd); a lock held by a crashed
machine is released by the server when its lease expires (about 90 s on NFSv4).
Liveness of a holder can be checked only on the same host; a refusal names the
host. Where the filesystem refuses locks at all, the stage warns and runs unlocked.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from tasks.runtime.errors import StageError

_HELD: set[int] = set()   # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class Busy(StageError):
    """Another run holds the lock on an output."""


def beside(output: str | Path, *parts: str) -> Path:
    """The lock file of ``output`` (optionally of one part of it: a split, a shard):
    ``<parent>/.<name>[.<part>...].lock``, a sibling of the folder, never inside it."""
    output = Path(output)
    return output.parent / ("." + ".".join([output.name, *parts]) + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(lock_file: Path) -> str:
    """Who holds ``lock_file``, from the record its holder wrote."""
    try:
        holder = json.loads(lock_file.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
        text = f"pid {pid} on {host} ({holder['command']}), since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its record yet"
    if host == socket.gethostname() and not _alive(pid):
        text += f"; pid {pid} has exited, but a process it started still holds the lock"
    return text


def _acquire(fd: int, lock_file: Path, output: str | Path) -> bool:
    """Lock ``fd``; False where the filesystem has no locks (warned), Busy if another run holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        raise Busy(f"{output} is being written by another run: {describe_holder(lock_file)}. "
                   f"Wait for it to finish or stop it; a stopped run leaves nothing that blocks the next "
                   f"(lock file {lock_file})") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    print(f"warning: {lock_file}: the filesystem does not support locks; "
          f"running without protection against a concurrent run on {output}", file=sys.stderr)
    return False


@contextlib.contextmanager
def hold(output: str | Path, *parts: str) -> Iterator[None]:
    """Hold the lock of ``output`` (or of its ``parts``: see ``beside``) for the block, or raise ``Busy``."""
    lock_file = beside(output, *parts)
    output = f"{output} ({', '.join(parts)})" if parts else str(output)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError as e:
        raise StageError(f"{lock_file}: cannot open the lock file of {output}: {e.strerror}") from None
    try:
        if _acquire(fd, lock_file, output):
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                      "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock
