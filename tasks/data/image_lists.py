"""Text files that list images, one path per line: the original's "train on your own
images" route (data.source custom, and FileListDataset).

A list is input like any other file: its lines may not reach outside the folder they
are meant to stay in. Relative lines are taken from the list file's folder, and every
image must resolve (symlinks followed) to a place under ``root``, by default the list's
folder, so ``../../etc/passwd`` or ``/home/someone/.ssh/id_rsa`` is refused with the list
file, the line and the reason; ``allow_outside`` lifts this on purpose. Every listed
image must be a regular file (not a FIFO or device) of at most MAX_IMAGE_BYTES.
"""
from __future__ import annotations

import os
from pathlib import Path

from models.files import special_kind
from tasks.data.limits import MAX_IMAGE_BYTES
from tasks.runtime.errors import StageError

OPT_IN = "set data.custom.root to a folder that holds them, or data.custom.allow_outside: true"


def image_file_problem(st: os.stat_result) -> str | None:
    """Why a file with status ``st`` cannot be read as an image (a FIFO, a device, too large), or None."""
    if kind := special_kind(st.st_mode):
        return f"is {kind}, not a regular file"
    if st.st_size > MAX_IMAGE_BYTES:
        return f"has {st.st_size} bytes, more than the limit of {MAX_IMAGE_BYTES}"
    return None


def read_image_list(path: str | Path, root: str | Path | None = None, allow_outside: bool = False) -> list[Path]:
    """Image paths listed in a text file (one per line; relative to the list's folder); all must
    exist, be regular files and, unless ``allow_outside``, lie under ``root`` (default: the list's folder)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: image list not found")
    root = Path(root) if root else path.parent
    real_root = Path(os.path.realpath(root))
    images = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        image = path.parent / name
        real = Path(os.path.realpath(image))
        if not allow_outside and not real.is_relative_to(real_root):
            raise StageError(f"{path}:{n}: image {name!r} is outside {root} (it is {real}); list images under "
                             f"{root}, or {OPT_IN}")
        try:
            st = image.stat()
        except FileNotFoundError:
            raise StageError(f"{path}:{n}: image {name!r} not found (looked at {image})") from None
        if problem := image_file_problem(st):
            raise StageError(f"{path}:{n}: image {name!r} {problem}")
        images.append(image)
    if not images:
        raise StageError(f"{path}: lists no images")
    return images
