"""The pipeline's scene dataset: extracted images with their object records, cropped as the original.

    data/dataset/image/<split>/<synset>/<name>.JPEG       extract
    data/dataset/objects/<split>/<synset>/<name>.json     annotate@objects (records.py)
    data/dataset/objects/categories.json                  the dataset's category table and settings

``ObjectsDataset(..., crop_method)`` returns the ImageNetDataset sample dict (``image`` in
[-1, 1], ``class_label``, ``synset``, ``human_label``, ``relpath``) plus ``objects`` (the
image's Annotations) and ``crop_bbox`` (crops.py: the box the original reports for the crop
cut). ``ObjectsTokens`` turns such a sample into the builder's ``cond_tokens`` (with the
flip applied to the image, and the objects in a seeded random order, as the original's
training shuffles them).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tasks.data.classes import ClassTable
from tasks.data.images import load_rgb
from tasks.data.objects.builders import ObjectsCenterPointsBuilder
from tasks.data.objects.categories import CategoryTable
from tasks.data.objects.crops import crop_box, cut
from tasks.data.objects.records import CATEGORIES_FILE, read_json, record_annotations


def read_categories(objects_root: str | Path) -> tuple[CategoryTable, dict]:
    """The dataset's category table and its description (source, filters) from categories.json."""
    path = Path(objects_root) / CATEGORIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `taming annotate --kind objects`)")
    info = read_json(path)
    try:
        return CategoryTable.from_json(info["categories"]), info
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a category file: {e}") from None


class ObjectsDataset(Dataset):
    def __init__(self, images_root: str | Path, objects_root: str | Path, split: str, size: int,
                 synsets_json: str | Path, crop_method: str = "center"):
        self.images_root, self.objects_root = Path(images_root), Path(objects_root)
        self.split, self.size, self.crop_method = split, size, crop_method
        listing = self.images_root / split / "filelist.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"{listing}: not found (run `taming extract` first)")
        self.relpaths = [line for line in listing.read_text().splitlines() if line]
        self.categories, self.info = read_categories(self.objects_root)
        self.classes = ClassTable.read(synsets_json)
        self.class_labels = [self.classes.label(p.split("/")[0]) for p in self.relpaths]

    def __len__(self) -> int:
        return len(self.relpaths)

    def record_path(self, i: int) -> Path:
        return self.objects_root / self.split / (self.relpaths[i].rsplit(".", 1)[0] + ".json")

    def record(self, i: int) -> dict:
        path = self.record_path(i)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no objects for {self.relpaths[i]} (run `taming annotate --kind objects`)")
        return read_json(path)

    def __getitem__(self, i: int) -> dict:
        image = Image.fromarray(load_rgb(self.images_root / self.split / self.relpaths[i]))
        box, how = crop_box(self.crop_method, *image.size, self.size)
        pixels = torch.from_numpy(np.array(cut(image, how, self.size))).permute(2, 0, 1).float() / 127.5 - 1.0
        synset = self.relpaths[i].split("/")[0]
        return {"image": pixels, "objects": record_annotations(self.record(i)), "crop_bbox": box,
                "class_label": self.class_labels[i], "synset": synset, "human_label": self.classes.name(synset),
                "relpath": self.relpaths[i]}


class ObjectsTokens:
    """A sample's objects, crop and flip -> ``cond_tokens`` (a LongTensor), in place of
    ``objects`` and ``crop_bbox``. The object order is shuffled with a generator seeded from
    torch's (tokenize seeds torch per row, so every row has its own, reproducible order)."""

    def __init__(self, builder: ObjectsCenterPointsBuilder):
        self.builder = builder

    def __call__(self, sample: dict, flipped: bool) -> dict:
        sample = dict(sample)
        rng = random.Random(int(torch.randint(0, 2 ** 62, ())))
        tokens = self.builder.build(sample.pop("objects"), sample.pop("crop_bbox"), flipped, rng=rng)
        return {**sample, "cond_tokens": torch.tensor(tokens, dtype=torch.int64)}
