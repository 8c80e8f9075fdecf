"""Atomic file writes: a reader never sees a half-written file under its final name.

Everything is written to a temporary name in the same directory and renamed into
place when complete (rename is atomic on POSIX), so an interrupted stage leaves
only ``.tmp-*`` debris that the rerun ignores and overwrites.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from models.files import atomic_path, sha256_file  # noqa: F401  (the primitives, for stages to import from here)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def is_temp(path: str | Path) -> bool:
    """True for the leftovers of an interrupted atomic write."""
    return Path(path).name.startswith(".tmp-")


def files_signature(paths: Iterable[str | Path]) -> str:
    """SHA-256 over each file's path, size and modification time: a cheap identity for many
    inputs (reading a million images to hash them would take hours; a file rewritten with
    other content gets a new mtime). Stricter than a content hash: a file rewritten with the
    same bytes counts as changed."""
    h = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
