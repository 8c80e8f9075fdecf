"""Small datasets laid out exactly as their downloads are, built from the example sets
shipped in examples/ (the original's COCO, ADE20k and S-FLCKR photos with label maps).

Only the pixels are small: folder names, file names (taken from the original's split
lists where there are lists), formats (FFHQ PNGs, CelebA-HQ (1, 3, H, W) uint8 .npy
arrays, COCO-Stuff maps with 255 = unlabelled, ADE20k annotations) are the real ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.faces import split_names

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def example_pairs(name: str) -> list[tuple[Path, Path]]:
    """(photo, label map) of a shipped example set, in its list's order."""
    lines = [line for line in (EXAMPLES / name / "examples.txt").read_text().splitlines() if line]
    return [(EXAMPLES / name / "images" / line, EXAMPLES / name / "segmentations" / line.replace(".jpg", ".png"))
            for line in lines]


def faces(n: int, side: int) -> list[np.ndarray]:
    """``n`` square (side, side, 3) uint8 pictures: centre crops of the example photos."""
    photos = [p for name in ("coco", "ade20k", "sflckr") for p, _ in example_pairs(name)]
    out = []
    for path in photos[:n]:
        im = Image.open(path).convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        out.append(np.asarray(im.crop((left, top, left + s, top + s)).resize((side, side), Image.LANCZOS)))
    return out


def make_ffhq(root: Path, n_train: int = 4, n_val: int = 2, side: int = 32, grouped: bool = True) -> Path:
    """FFHQ's images1024x1024: <NNNNN>.png in the official <NN000>/ folders (or flat), the first
    names of the original's split lists."""
    folder = root / "images1024x1024"
    names = split_names("ffhq", "train")[:n_train] + split_names("ffhq", "validation")[:n_val]
    for name, picture in zip(names, faces(len(names), side)):
        group = f"{int(name.split('.')[0]) // 1000 * 1000:05d}"
        path = folder / group / name if grouped else folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path)
    return folder


def make_celebahq(root: Path, n_train: int = 4, n_val: int = 2, side: int = 32) -> Path:
    """The folder of imgHQ<NNNNN>.npy files: each a (1, 3, side, side) uint8 array."""
    folder = root / "celebahq"
    folder.mkdir(parents=True)
    names = split_names("celebahq", "train")[:n_train] + split_names("celebahq", "validation")[:n_val]
    for name, picture in zip(names, faces(len(names) + 3, side)[3:]):
        np.save(folder / name, picture.transpose(2, 0, 1)[None])
    return folder


def stored_coco_stuff(labels_as_read: np.ndarray) -> np.ndarray:
    """The shipped COCO maps hold ids + 1 (0 unlabelled); COCO-Stuff's PNGs hold ids, 255 unlabelled."""
    return (labels_as_read.astype(np.int16) - 1).astype(np.uint8)   # 0 -> 255


def make_coco(root: Path, n_train: int = 6) -> tuple[Path, Path]:
    """COCO 2017 (train2017/, val2017/ of <id>.jpg) and the unpacked stuffthingmaps_trainval2017
    (train2017/, val2017/ of <id>.png, 255 = unlabelled): the examples, the first n_train for training."""
    coco, stuff = root / "coco", root / "cocostuffthings"
    for i, (photo, labels) in enumerate(example_pairs("coco")):
        split = "train2017" if i < n_train else "val2017"
        for folder in (coco / split, stuff / split):
            folder.mkdir(parents=True, exist_ok=True)
        (coco / split / photo.name).write_bytes(photo.read_bytes())
        Image.fromarray(stored_coco_stuff(np.asarray(Image.open(labels))), mode="L").save(stuff / split / labels.name)
    return coco, stuff


def make_ade20k(root: Path, n_train: int = 6) -> Path:
    """ADEChallengeData2016: images/ and annotations/ with training/ and validation/, plus the
    two text files of the zip; the examples (validation photos) renamed into both splits."""
    folder = root / "ADEChallengeData2016"
    counters = {"training": 0, "validation": 0}
    for i, (photo, labels) in enumerate(example_pairs("ade20k")):
        split = "training" if i < n_train else "validation"
        counters[split] += 1
        stem = f"ADE_{'train' if split == 'training' else 'val'}_{counters[split]:08d}"
        for kind, source, suffix in (("images", photo, ".jpg"), ("annotations", labels, ".png")):
            (folder / kind / split).mkdir(parents=True, exist_ok=True)
            (folder / kind / split / f"{stem}{suffix}").write_bytes(source.read_bytes())
    (folder / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    (folder / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    return folder


def make_photo_folder(root: Path) -> Path:
    """A folder of photos in subfolders (the S-FLCKR examples, by their Flickr tag)."""
    folder = root / "photos"
    for photo, _ in example_pairs("sflckr"):
        target = folder / photo.relative_to(EXAMPLES / "sflckr" / "images")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
    return folder
