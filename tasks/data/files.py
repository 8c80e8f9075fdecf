"""Atomic file writes: a reader never sees a half-written file under its final name.

Everything is written to a temporary name in the same directory and renamed into
place when complete (rename is atomic on POSIX), so an interrupted stage leaves
only ``.tmp-*`` debris that the rerun ignores and overwrites.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

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
