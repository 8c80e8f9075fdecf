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


def write_nested_tar(path: str | Path, groups: Iterable[tuple[str, Iterable[tuple[str, bytes]]]]) -> None:
    """Write a tar of tars atomically, as ILSVRC2012_img_train.tar: one ``<name>`` member per
    group, itself a tar of the group's ``(name, data)`` members. Streamed: each inner tar is
    written in place and its header patched with the size once it is known, so memory holds
    one member at a time whatever the size of a group (FFHQ as one class: 89 GB)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for name, members in groups:
            start = f.tell()
            f.write(_info(name, 0).tobuf(tarfile.USTAR_FORMAT))     # placeholder until the size is known
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as inner:
                for member, data in members:
                    add_bytes(inner, member, data)
            end = f.tell()
            f.seek(start)
            f.write(_info(name, end - start - tarfile.BLOCKSIZE).tobuf(tarfile.USTAR_FORMAT))
            f.seek(end)
            f.write(tarfile.NUL * (-(end - start) % tarfile.BLOCKSIZE))
        f.write(tarfile.NUL * 2 * tarfile.BLOCKSIZE)                 # end of archive, padded as tarfile pads
        f.write(tarfile.NUL * (-f.tell() % tarfile.RECORDSIZE))


class MemberReader(io.RawIOBase):
    """Bytes [offset, offset + size) of a file as a read-only, seekable file: a member of a tar
    (a synset tar inside the train tar) read in place, never past its end, never all at once."""

    def __init__(self, path: str | Path, offset: int, size: int):
        super().__init__()
        self._file = open(path, "rb")
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        self._file.seek(self._offset + self._pos)
        got = self._file.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


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
