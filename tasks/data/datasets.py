"""torch Datasets over extracted data: ImageNet-style folders (with depth / segmentation) and file lists.

Every dataset returns the same sample dict (the cross-team contract):

    "image"         float32 tensor (3, H, W) in [-1, 1]       (uint8 / 127.5 - 1)
    "depth"         float32 tensor (1, H, W) in [-1, 1]       only with depth_root: the stored
                    float32 map min-max normalised per image over the *whole* image, then resized
                    and cropped like the image (as the original D-RIN ImageNetTrainWithDepth)
    "segmentation"  int64 tensor (H, W) of label ids          only with segmentation_root
    "coord"         float32 tensor (1, H, W) in [0, 1)        only with coord: each pixel's place in
                    the rescaled image, (row * width + column) / (height * width), cropped with
                    the image but never flipped (the original FacesHQ's ``coord``)
    "class_label"   int: the synset's index in synsets.json (tasks/data/classes.py), on every split
    "synset"        str, e.g. "n09000003"
    "human_label"   str, e.g. "cylinder" (the synset itself where no name is known)
    "relpath"       str, "<synset>/<name>.JPEG" (file lists: the path as listed)

Preprocessing is the original's: rescale so the *shorter* side is ``rescale``
(default ``size``; bilinear, nearest for label maps), then a ``size`` x ``size`` crop,
random in training and central otherwise, plus an optional horizontal flip; the
*same* crop and flip apply to the image and its conditioning maps. A ``rescale``
above ``size`` cuts crops out of a larger image (the original's ``size`` and
``crop_size``: COCO 296 and 256). ``size=None`` keeps images as they are. Any decodable image is converted to RGB when read
(greyscale, CMYK, PNG bytes under a .JPEG name: see tasks/extract.py).

``vqgan_input`` turns a batch of samples into what a VQGAN of a kind encodes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from tasks.data.classes import ClassTable
from tasks.data.formats import load_depth_png, load_label_png
from tasks.data.image_lists import read_image_list
from tasks.data.images import load_rgb
from tasks.data.layout import DATA


def vqgan_input(batch: dict, kind: str, n_labels: int | None = None) -> torch.Tensor:
    """The tensor a VQGAN of this kind (image, depth, segmentation) encodes, from a batch of
    samples: segmentation label maps become one-hot (B, n_labels, H, W)."""
    if kind == "segmentation":
        return F.one_hot(batch["segmentation"].long(), n_labels).permute(0, 3, 1, 2).float()
    return batch[kind]


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """A depth map min-max normalised to [-1, 1] over the whole map (original D-RIN)."""
    depth = (depth - depth.min()) / max(1e-8, float(depth.max() - depth.min()))
    return (2.0 * depth - 1.0).astype(np.float32)


def normalised_depth(path: str | Path) -> np.ndarray:
    """The stored float32 depth map, min-max normalised to [-1, 1] per image (normalise_depth)."""
    return normalise_depth(load_depth_png(path))


class Preprocess:
    """Shorter-side rescale to ``rescale`` (default ``size``), then one ``size`` crop (and flip)
    shared by the image and its maps; with ``coord``, the crop's coordinates as map "coord"."""

    def __init__(self, size: int | None = None, random_crop: bool = False, flip: bool = False,
                 rescale: int | None = None, coord: bool = False):
        if size is not None and rescale is not None and rescale < size:
            raise ValueError(f"rescale {rescale} is smaller than the crop size {size}")
        self.size, self.random_crop, self.flip, self.coord = size, random_crop, flip, coord
        self.rescale = rescale if size is not None and rescale is not None else size

    def __call__(self, image: np.ndarray, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``maps``: float32 maps (resized bilinearly) or uint8 label maps (nearest), all image-sized."""
        h, w = image.shape[:2]
        for name, m in maps.items():
            if m.shape[:2] != (h, w):
                raise ValueError(f"{name} map is {m.shape[:2]}, image is {(h, w)}")
        if self.size is None:
            return image, {**maps, **({"coord": coordinates(h, w, 0, 0, h, w)} if self.coord else {})}
        scale = self.rescale / min(h, w)
        nh, nw = max(self.rescale, round(h * scale)), max(self.rescale, round(w * scale))
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
            maps = {k: _resize(m, (nw, nh)) for k, m in maps.items()}
        if self.random_crop:
            top = int(torch.randint(0, nh - self.size + 1, ()))
            left = int(torch.randint(0, nw - self.size + 1, ()))
        else:
            top, left = (nh - self.size) // 2, (nw - self.size) // 2
        flip = self.flip and bool(torch.rand(()) < 0.5)

        def crop(a: np.ndarray) -> np.ndarray:
            a = a[top:top + self.size, left:left + self.size]
            return a[:, ::-1] if flip else a

        maps = {k: crop(m) for k, m in maps.items()}
        if self.coord:   # where the crop lies; a mirrored crop stays where it is
            maps["coord"] = coordinates(nh, nw, top, left, self.size, self.size)
        return crop(image), maps


def coordinates(height: int, width: int, top: int = 0, left: int = 0, rows: int | None = None,
                cols: int | None = None) -> np.ndarray:
    """(rows, cols) float32: each pixel's place in a height x width picture, (row * width + column)
    / (height * width), for the window at (top, left); the original FacesHQ's coordinates."""
    rows, cols = rows or height, cols or width
    r = np.arange(top, top + rows, dtype=np.float64)[:, None]
    c = np.arange(left, left + cols, dtype=np.float64)[None, :]
    return ((r * width + c) / (height * width)).astype(np.float32)


def _resize(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if m.dtype == np.uint8:      # labels: never blend ids
        return np.asarray(Image.fromarray(m).resize(size, Image.NEAREST))
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1.0


class ImageNetDataset(Dataset):
    """``<root>/<split>/filelist.txt`` images, optionally paired with depth and segmentation maps.

    Maps are found by relative path: ``<depth_root>/<split>/<synset>/<name>.png`` (RGBA float32,
    tasks/data/formats.py) and ``<segmentation_root>/<split>/<synset>/<name>.png`` (uint8 labels).
    ``synsets_json`` (acquire's synsets.json) gives the class labels and human names;
    ``sub_indices`` ("32-123, 256", the original's syntax) selects classes by label.
    ``rescale``: the shorter side crops are cut from (default ``size``); ``coord``: add each
    crop's coordinates in the rescaled image (conditioning coord).
    """

    def __init__(self, root: str | Path = DATA.images, split: str = "train", size: int | None = None,
                 random_crop: bool = False, flip: bool = False, sub_indices: str | None = None,
                 synsets_json: str | Path = DATA.synsets_json,
                 depth_root: str | Path | None = None, segmentation_root: str | Path | None = None,
                 rescale: int | None = None, coord: bool = False):
        self.root, self.split = Path(root), split
        listing = self.root / split / "filelist.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"{listing}: not found (run `taming extract` first)")
        relpaths = [line for line in listing.read_text().splitlines() if line]
        self.classes = ClassTable.read(synsets_json)
        if sub_indices:
            selected = self.classes.selected(sub_indices)
            relpaths = [p for p in relpaths if p.split("/")[0] in selected]
        self.relpaths = relpaths
        self.synsets = [p.split("/")[0] for p in relpaths]
        self.class_labels = [self.classes.label(s) for s in self.synsets]
        self.human_labels = [self.classes.name(s) for s in self.synsets]
        self.depth_root = Path(depth_root) if depth_root else None
        self.segmentation_root = Path(segmentation_root) if segmentation_root else None
        self.preprocess = Preprocess(size, random_crop, flip, rescale, coord)

    def __len__(self) -> int:
        return len(self.relpaths)

    def _map_path(self, root: Path, i: int) -> Path:
        return root / self.split / (self.relpaths[i].rsplit(".", 1)[0] + ".png")

    def __getitem__(self, i: int) -> dict:
        image = load_rgb(self.root / self.split / self.relpaths[i])
        maps = {}
        if self.depth_root:
            maps["depth"] = normalised_depth(self._map_path(self.depth_root, i))
        if self.segmentation_root:
            maps["segmentation"] = load_label_png(self._map_path(self.segmentation_root, i))
        image, maps = self.preprocess(image, maps)
        sample = {"image": _image_tensor(image)}
        if "depth" in maps:
            sample["depth"] = torch.from_numpy(np.array(maps["depth"]))[None]
        if "segmentation" in maps:
            sample["segmentation"] = torch.from_numpy(np.array(maps["segmentation"])).long()
        if "coord" in maps:
            sample["coord"] = torch.from_numpy(maps["coord"])[None]
        return {**sample, "class_label": self.class_labels[i], "synset": self.synsets[i],
                "human_label": self.human_labels[i], "relpath": self.relpaths[i]}


class FileListDataset(Dataset):
    """Images listed in a text file, one path per line (the original's CustomTrain / CustomTest).

    Relative paths are taken from the list file's folder; images must lie under ``root``
    (default: the list's folder) unless ``allow_outside`` (tasks/data/image_lists.py).
    Samples carry class_label 0 and synset / human_label "custom".
    """

    def __init__(self, list_file: str | Path, size: int | None = None, random_crop: bool = False,
                 flip: bool = False, root: str | Path | None = None, allow_outside: bool = False):
        self.list_file = Path(list_file)
        self.paths = read_image_list(self.list_file, root, allow_outside)
        self.relpaths = [line.strip() for line in self.list_file.read_text().splitlines() if line.strip()]
        self.preprocess = Preprocess(size, random_crop, flip)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image, _ = self.preprocess(load_rgb(self.paths[i]), {})
        return {"image": _image_tensor(image), "class_label": 0, "synset": "custom", "human_label": "custom",
                "relpath": self.relpaths[i]}


def spread_indices(labels: list[int], n: int, classes: list[int] | None = None) -> list[int]:
    """``n`` indices spread evenly over a split (file lists are sorted by class, so the
    first n would all be one class), among the items whose label is in ``classes``."""
    candidates = [i for i, c in enumerate(labels) if classes is None or c in classes]
    if not candidates:
        raise ValueError(f"no item has the class labels {classes} (labels present: {sorted(set(labels))})")
    if n >= len(candidates):
        return candidates
    step = len(candidates) / n
    return [candidates[int(k * step)] for k in range(n)]
