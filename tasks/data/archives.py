"""Tar archives: deterministic writing, and the safety rules for reading untrusted ones.

We never call ``extract``/``extractall``: a reader takes a member's *bytes* and
writes them to a path it builds itself from a checked plain file name, so a
member can never place anything outside the target. ``member_problem`` says
why a member is refused (absolute path, ``..``, link, device, sparse, too large,
a name that is not plain UTF-8 or too long ...), for the rejection manifest, before
a byte of it is read. ``open_tar`` reads untrusted archives with the declared size of
extended headers bounded (tasks/data/limits.py), and ``open_member`` reads a tar
inside a tar in place, so memory never depends on a size an archive declares.
"""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterable

from tasks.data.files import atomic_path
from tasks.data.limits import MAX_NAME_BYTES, MAX_TAR_HEADER_BYTES

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


def is_plain_name(name: str) -> bool:
    """A single path component that cannot escape its folder or hide (no '/', '..', leading
    dot), short enough for any filesystem."""
    return name_problem(name) is None


def name_problem(name: str) -> str | None:
    """Why ``name`` is no plain file name, or None. tarfile decodes names as UTF-8 with
    surrogate escapes, so bytes that are not UTF-8 show up as surrogates."""
    raw = name.encode("utf-8", "surrogateescape")
    if raw.decode("utf-8", "replace") != name:
        return "name is not valid UTF-8"
    if len(raw) > MAX_NAME_BYTES:
        return f"name longer than {MAX_NAME_BYTES} bytes"
    if not _SAFE_NAME.fullmatch(name):
        return "not a plain file name"
    return None


def shown_name(name: str) -> str:
    """A member name as text for manifests: bytes that are not UTF-8 as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def path_problem(name: str) -> str | None:
    """Why a member name is unsafe, or None. Checked before anything else about a member."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "parent reference (..)"
    return None


def member_problem(member: tarfile.TarInfo, max_bytes: int | None) -> str | None:
    """Why ``member`` must not be extracted as a plain file, or None if it is a safe regular
    file of at most ``max_bytes`` (None: any size, for a tar inside a tar read in place)."""
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
    if member.issparse():       # its holes would be expanded in memory: 20 KB can declare 64 GiB
        return "sparse file"
    if max_bytes is not None and member.size > max_bytes:
        return f"{member.size} bytes, more than the limit of {max_bytes}"
    return name_problem(member.name)


_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                     tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _CheckedTarInfo(tarfile.TarInfo):
    """Member headers of an untrusted archive. tarfile reads an extended header (pax records,
    a GNU long name) into memory whole, and lets a malformed one escape as ValueError or
    OSError: bound its size first, and make every malformed header a tarfile.ReadError."""

    def _proc_member(self, tar):    # tarfile's documented hook for TarInfo subclasses
        if self.type in _EXTENDED_HEADERS and self.size > MAX_TAR_HEADER_BYTES:
            raise tarfile.SubsequentHeaderError(f"extended header of {self.size} bytes at offset {self.offset}, "
                                                f"more than the limit of {MAX_TAR_HEADER_BYTES}")
        try:
            return super()._proc_member(tar)
        except (ValueError, IndexError, OverflowError, OSError) as e:
            raise tarfile.SubsequentHeaderError(f"malformed header at offset {self.offset}: {e}") from None


def open_tar(path: str | Path | None = None, fileobj: BinaryIO | None = None) -> tarfile.TarFile:
    """An untrusted uncompressed tar opened for reading (see _CheckedTarInfo)."""
    return tarfile.open(path, mode="r:", fileobj=fileobj, tarinfo=_CheckedTarInfo, encoding="utf-8",
                        errors="surrogateescape")


class _Window(io.RawIOBase):
    """Bytes [offset, offset + size) of a file as a read-only file of its own."""

    def __init__(self, f: BinaryIO, offset: int, size: int):
        super().__init__()
        self.f, self.offset, self.size, self.pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        self.pos = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        self.f.seek(self.offset + self.pos)
        got = self.f.readinto(memoryview(buffer)[:n])
        self.pos += got
        return got

    def close(self) -> None:
        self.f.close()
        super().close()


def open_member(path: str | Path, offset: int, size: int) -> BinaryIO:
    """The ``size`` bytes at ``offset`` of the file at ``path`` (an archive member, e.g. a synset
    tar in the train tar), read in place: memory does not grow with ``size``."""
    return io.BufferedReader(_Window(open(path, "rb"), offset, size))
