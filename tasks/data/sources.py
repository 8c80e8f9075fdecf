"""What every data source hands to `acquire`: images (and label maps) listed from the
layout its download has, under plain member names.

A source module (tasks/data/faces.py, coco.py, ade20k.py, and `folder_images` here)
reads the real on-disk layout the original README describes and returns, per split,
``SourceImage`` entries: the class folder (synset) an image goes to, its member name
(``<stem>.JPEG``, the name extract writes; the bytes keep their format) and its file;
``labels`` is the source's own label map where it ships one. A wrong layout is a
``SourceError`` naming the path and what was expected there.

Which sources ship maps, and in which label convention: tasks/data/label_maps.py.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from models.files import open_regular
from tasks.data.archives import is_plain_name
from tasks.data.limits import MAX_IMAGE_BYTES
from tasks.runtime.errors import StageError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


class SourceError(StageError):
    """A data source's folder does not have the layout its download has."""


@dataclass(frozen=True)
class SourceImage:
    synset: str                 # the class folder it is extracted to
    name: str                   # member name, <stem>.JPEG
    path: Path                  # the file in the source's folder
    labels: Path | None = None  # the source's label map for it, if the source ships maps

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


def require_folder(path: Path, expected: str) -> Path:
    """``path`` as a folder, or a SourceError saying what was expected there."""
    if not path.is_dir():
        state = "is a file" if path.is_file() else "not found"
        raise SourceError(f"{path}: {state}; expected {expected}")
    return path


def files_with_suffix(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The regular files directly in ``folder`` whose names end with one of ``suffixes``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def member_name(stem: str, where: Path) -> str:
    """The member name of a file with this stem; it must be a plain name (it names a file)."""
    name = f"{stem}.JPEG"
    if not is_plain_name(name):
        raise SourceError(f"{where}: {stem!r} cannot name an extracted file (letters, digits, _ . + - only)")
    return name


def read_source_file(path: Path) -> bytes:
    """The bytes of an image or label map a source lists, as acquire packs them: a regular
    file (never a FIFO or device) of at most MAX_IMAGE_BYTES, read once it is checked."""
    try:
        with open_regular(path) as f:
            if (n := os.fstat(f.fileno()).st_size) > MAX_IMAGE_BYTES:
                raise SourceError(f"{path}: {n} bytes, more than the limit of {MAX_IMAGE_BYTES} for one image")
            return f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise SourceError(f"{path}: cannot read it: {e.strerror or e}") from None


def with_label_maps(images: list[Path], maps: Path, synset: str, what: str) -> list[SourceImage]:
    """Each image with its label map <stem>.png in ``maps``; a SourceError names the maps
    folder, how many are missing and the first one when any image has none. ``what`` says
    whose maps they are in the message ("ADE20k train images have no annotation")."""
    items = [SourceImage(synset, member_name(p.stem, p), p, maps / f"{p.stem}.png") for p in images]
    missing = [item.labels for item in items if not item.labels.is_file()]
    if missing:
        raise SourceError(f"{maps}: {len(missing)} of {len(items)} {what} (e.g. {missing[0]}); expected "
                          f"<name>.png beside every <name>{images[0].suffix} of {images[0].parent}")
    return items


def check_count(found: int, official: int, complete: bool, what: str, where: Path, key: str) -> None:
    """A complete source has the official number of files: a partial download fails here."""
    if complete and found != official:
        raise SourceError(f"{where}: {found} {what}, but the official dataset has {official}; a partial "
                          f"download? Set {key}.complete: false to use a subset on purpose")
    if found == 0:
        raise SourceError(f"{where}: no {what} found")


def folder_images(root: Path, synset: str, validation_fraction: float, seed: int) -> dict[str, list[SourceImage]]:
    """Any folder of photos (``.jpg``, ``.jpeg``, ``.png``, in subfolders too), as the paper's
    S-FLCKR: split at random into train and validation by a seeded hash of each file's path
    under ``root``, so adding photos never moves the others. Members are named
    ``<synset>_<n>.JPEG`` (validation: ``<synset>_val_<n>.JPEG``) in path order; acquire's
    sources.json maps them back to the files."""
    require_folder(root, "a folder of photos (.jpg, .jpeg, .png; subfolders are read too)")
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
    if not photos:
        raise SourceError(f"{root}: no photos found; expected .jpg, .jpeg or .png files (subfolders are read too)")
    splits: dict[str, list[SourceImage]] = {"train": [], "validation": []}
    for path in photos:
        key = hashlib.sha256(f"{seed}\0{path.relative_to(root).as_posix()}".encode()).digest()
        split = "validation" if int.from_bytes(key[:8], "big") < validation_fraction * 2 ** 64 else "train"
        splits[split].append(path)
    prefix = {"train": synset, "validation": f"{synset}_val"}
    return {split: [SourceImage(synset, f"{prefix[split]}_{n + 1:08d}.JPEG", path) for n, path in enumerate(paths)]
            for split, paths in splits.items()}
