"""Tar archives: deterministic writing, and the safety rules for reading untrusted ones.

We never call ``extract``/``extractall``: a reader takes a member's *bytes* and
writes them to a path it builds itself from a checked plain file name, so a
member can never place anything outside the target. ``member_problem`` says
why a member is refused (absolute path, ``..``, link, device, ...), for the
rejection manifest.
"""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import Iterable

from tasks.data.files import atomic_path

# Plain names only: no separators, no leading dot (hidden / '.' / '..').
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def _info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata so the same content always gives the same archive bytes (stable DVC hashes).
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An in-memory tar of ``(name, data)`` members (e.g. one synset's images)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add_bytes(tar, name, data)
    return buf.getvalue()


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a tar of ``(name, data)`` members atomically (streamed, members may be generated)."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                add_bytes(tar, name, data)


def is_plain_name(name: str) -> bool:
    """A single path component that cannot escape its folder or hide (no '/', '..', leading dot)."""
    return bool(_SAFE_NAME.fullmatch(name))


def path_problem(name: str) -> str | None:
    """Why a member name is unsafe, or None. Checked before anything else about a member."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "parent reference (..)"
    return None


def member_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be extracted as a plain file, or None if it is a safe regular file."""
    problem = path_problem(member.name)
    if problem:
        return problem
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    if member.isdir():
        return "directory"
    if not member.isreg():
        return "not a regular file"
    if not is_plain_name(member.name):
        return "not a plain file name"
    return None
