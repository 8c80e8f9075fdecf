"""ADE20k as the MIT Scene Parsing Benchmark ships it (ADEChallengeData2016.zip), as the
original's taming/data/ade20k.py reads it:

    <root>/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    <root>/annotations/{training,validation}/ADE_{train,val}_<8 digits>.png   0 = unknown, 1..150
    <root>/sceneCategories.txt, objectInfo150.txt

151 labels (unknown + 150 classes), read as stored (tasks.data.label_maps.ADE20K).
"""
from __future__ import annotations

from pathlib import Path

from tasks.data.sources import SourceError, SourceImage, check_count, files_with_suffix, require_folder, with_label_maps

SPLIT_FOLDERS = {"train": "training", "validation": "validation"}
IMAGES = {"train": 20_210, "validation": 2_000}


def ade20k_images(root: str | Path, split: str, complete: bool = True, synset: str = "ade20k") -> list[SourceImage]:
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        raise SourceError(f"{root}: holds an ADEChallengeData2016 folder; data.ade20k.root must be that folder itself")
    folder = SPLIT_FOLDERS[split]
    expected = "ADEChallengeData2016's images/ and annotations/ folders (each with training/ and validation/)"
    images = files_with_suffix(require_folder(root / "images" / folder, expected), (".jpg",))
    check_count(len(images), IMAGES[split], complete, f"ADE20k {split} images (.jpg)", root / "images" / folder,
                "data.ade20k")
    annotations = require_folder(root / "annotations" / folder, expected)
    return with_label_maps(images, annotations, synset, f"ADE20k {split} images have no annotation")
