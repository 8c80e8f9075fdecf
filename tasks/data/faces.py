"""FFHQ and CelebA-HQ as their downloads lay them out, split as the original splits them.

FFHQ: the ``images1024x1024`` folder of the FFHQ repository (github.com/NVlabs/ffhq-dataset),
70,000 PNGs ``<NNNNN>.png``, either flat (what the original's ``data/ffhq`` symlink points
at) or in the official thousand-image folders ``<NN000>/<NNNNN>.png``.

CelebA-HQ: the folder of 30,000 ``imgHQ<NNNNN>.npy`` files the PGGAN instructions produce
(github.com/tkarras/progressive_growing_of_gans), each a (1, 3, 1024, 1024) uint8 array
(the original's NumpyPaths). They are read with ``allow_pickle=False`` after their header
says they are uint8 pictures of a bounded size, and packed as lossless PNGs.

The train/validation splits are the original's lists (``splits/``: FFHQ 60,000 / 10,000,
CelebA-HQ 25,000 / 5,000). FacesHQ is both, CelebA-HQ as class 0 and FFHQ as class 1
(the original's ConcatDatasetWithIndex order).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from models.files import open_regular
from tasks.data.sources import SourceError, SourceImage, member_name, require_folder

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
LIST_SUFFIX = {"train": "train", "validation": "validation"}
MAX_SIDE = 4096       # a CelebA-HQ array larger than this is not a CelebA-HQ picture (bounded memory)


def split_names(dataset: str, split: str) -> list[str]:
    """The file names the original's split list names (``splits/<dataset><split>.txt``)."""
    return [line for line in (SPLITS_DIR / f"{dataset}{LIST_SUFFIX[split]}.txt").read_text().splitlines() if line]


def _present(names: list[str], paths: list[Path], root: Path, what: str, key: str, complete: bool,
             looked: str) -> list[tuple[str, Path]]:
    present = [p.is_file() for p in paths]
    found = [(n, p) for n, p, here in zip(names, paths, present) if here]
    missing = [n for n, here in zip(names, present) if not here]
    if not found:
        raise SourceError(f"{root}: none of the {len(names)} {what} the original's split list names is there "
                          f"(looked for {looked}, e.g. {paths[0]})")
    if complete and missing:
        raise SourceError(f"{root}: {len(missing)} of the {len(names)} {what} the original's split list names "
                          f"are missing (e.g. {missing[0]}; looked for {looked}); a partial download? Set "
                          f"{key}.complete: false to use a subset on purpose")
    return found


def ffhq_images(root: str | Path, split: str, complete: bool = True, synset: str = "ffhq") -> list[SourceImage]:
    root = Path(root)
    expected = "FFHQ's images1024x1024 folder: <NNNNN>.png, flat or in the official 00000/ ... 69000/ folders"
    if (root / "images1024x1024").is_dir():
        raise SourceError(f"{root}: holds an images1024x1024 folder; data.ffhq.root must be that folder itself")
    require_folder(root, expected)
    grouped = any(entry.is_dir() and entry.name.isdigit() and len(entry.name) == 5 for entry in root.iterdir())
    names = split_names("ffhq", split)
    paths = [root / f"{int(n.split('.')[0]) // 1000 * 1000:05d}" / n if grouped else root / n for n in names]
    looked = "<root>/<NN000>/<NNNNN>.png" if grouped else "<root>/<NNNNN>.png"
    found = _present(names, paths, root, f"FFHQ {split} images", "data.ffhq", complete, looked)
    return [SourceImage(synset, member_name(n.rsplit(".", 1)[0], root), p) for n, p in found]


def celebahq_images(root: str | Path, split: str, complete: bool = True,
                    synset: str = "celebahq") -> list[SourceImage]:
    root = Path(root)
    require_folder(root, "the folder of CelebA-HQ imgHQ<NNNNN>.npy files the PGGAN instructions produce")
    names = split_names("celebahq", split)
    paths = [root / n for n in names]
    if not any(p.is_file() for p in paths) and any(root.glob("*.[jp][pn]g")):
        raise SourceError(f"{root}: holds images but not the imgHQ<NNNNN>.npy files; CelebA-HQ is read as the "
                          f"PGGAN instructions produce it (the original's NumpyPaths)")
    found = _present(names, paths, root, f"CelebA-HQ {split} arrays", "data.celebahq", complete, "<root>/imgHQ<NNNNN>.npy")
    return [SourceImage(synset, member_name(n.rsplit(".", 1)[0], root), p) for n, p in found]


def read_npy_picture(path: str | Path) -> np.ndarray:
    """A CelebA-HQ ``.npy`` (1, 3, H, W) or (3, H, W) uint8 -> (H, W, 3) uint8. The header is
    checked before any data is read (no pickles, no other dtypes, sides <= MAX_SIDE), so a
    wrong or hostile file costs neither code execution nor memory."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
    except (ValueError, OSError) as e:
        raise SourceError(f"{path}: not a readable .npy file ({e})") from None
    expected = "a (1, 3, H, W) or (3, H, W) uint8 array (CelebA-HQ from the PGGAN instructions)"
    if dtype != np.uint8 or len(shape) not in (3, 4) or shape[-3] != 3 or (len(shape) == 4 and shape[0] != 1):
        raise SourceError(f"{path}: holds a {dtype} array of shape {shape}; expected {expected}")
    if min(shape[-2:]) < 1 or max(shape[-2:]) > MAX_SIDE:
        raise SourceError(f"{path}: a {shape[-2]}x{shape[-1]} picture; expected sides of 1..{MAX_SIDE} px")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise SourceError(f"{path}: truncated or corrupt .npy file ({e})") from None
    return np.ascontiguousarray(array.reshape(shape[-3:]).transpose(1, 2, 0))


def npy_png_bytes(path: str | Path) -> bytes:
    """A CelebA-HQ array as the bytes of a lossless PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(read_npy_picture(path), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
