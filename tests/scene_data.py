"""A tiny real dataset in the extracted layout, for the training-stage tests.

Renders procedural scenes (tasks/scenes.py) straight into what `extract`, `depth`
and `segment` produce: data/imagenet/{split}/<synset>/<name>.JPEG + filelist.txt,
data/depth/... (RGBA float32 PNG), data/segmentation/... (label PNG) and
data/raw/synsets.json.
"""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tasks import scenes
from tasks.formats import save_depth_png, save_label_png


def make_scene_data(root: Path, n_train: int = 4, n_val: int = 2, classes: int = 2, resolution: int = 32) -> Path:
    """Write the dataset under ``root/data``; returns ``root``."""
    data = root / "data"
    kinds = scenes.KINDS[:classes]
    for s, (split, n) in enumerate((("train", n_train), ("validation", n_val))):
        relpaths = []
        for k, kind in enumerate(kinds):
            for i in range(n):
                r = scenes.render(scenes.scene_for(0, s, k, i, classes), resolution)
                rel = f"{kind.synset}/{kind.synset}_{i + 1}"
                (data / "imagenet" / split / kind.synset).mkdir(parents=True, exist_ok=True)
                Image.fromarray(r.image).save(data / "imagenet" / split / f"{rel}.JPEG", quality=95)
                save_depth_png(data / "depth" / split / f"{rel}.png", r.inverse_depth)
                save_label_png(data / "segmentation" / split / f"{rel}.png", r.segmentation)
                relpaths.append(f"{rel}.JPEG")
        (data / "imagenet" / split / "filelist.txt").write_text("".join(f"{p}\n" for p in sorted(relpaths)))
    (data / "raw").mkdir(parents=True, exist_ok=True)
    (data / "raw" / "synsets.json").write_text(json.dumps(
        {kind.synset: {"index": k, "human": kind.name} for k, kind in enumerate(kinds)}))
    return root
