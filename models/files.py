"""File primitives shared by every layer: the one atomic write, opening a path named by
untrusted input, and content hashes.

Atomic write: a reader never sees a half-written file under its final name. Write to
a temporary name in the same directory, rename when complete (rename is atomic on
POSIX). The file gets the mode a plain ``open(path, "w")`` would give it (0666 less the
umask), so teammates on a shared filesystem can read it. Used by models/ (weights cache,
S3 downloads) and, through tasks/data/files.py, by every stage.

``open_regular``: a path that comes from a file (a config's ``remap:``, a line of an
image list) may name a FIFO, which blocks the reader forever, or a device such as
/dev/zero, which never ends. It is opened without blocking and refused unless it is a
regular file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}.{secrets.token_hex(8)}"
    # created as open() creates files (mode 0666 less the umask), not mkstemp's 0600
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (or a symlink to one);
    OSError naming it and what it is otherwise. Never blocks: anything else is refused
    before it is opened, and the open itself is non-blocking in case the path was swapped."""
    _check_regular(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(path: str | Path, mode: int) -> None:
    if kind := special_kind(mode):
        raise OSError(f"{path}: is {kind}, not a regular file; refusing to read it")


def special_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is if it is not a regular file ("a FIFO", ...), else None."""
    if stat.S_ISREG(mode):
        return None
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (checkpoints are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
