"""COCO 2017 on disk, as the original reads it: what every COCO route shares.

    <root>/train2017/<12-digit id>.jpg, <root>/val2017/...     the images (cocodataset.org);
                                                               <root>/annotations/ is read by the
                                                               routes that need it, not here
    <stuffthing_root>/{train2017,val2017}/<id>.png             COCO-Stuff stuff+thing label maps
                                                               (stuffthingmaps_trainval2017.zip)

The label maps hold 0-based COCO-Stuff ids 0..181 and 255 for unlabelled; the models read
them shifted by one, 183 labels with unlabelled 0 (tasks.data.label_maps.COCO_STUFF). The
original's crops (configs/coco_cond_stage.yaml): training images scaled to a shorter side
of 296 px and cut into random 256 px crops, validation images scaled to 256 and cut in the
centre.
"""
from __future__ import annotations

from pathlib import Path

from tasks.data.sources import SourceImage, check_count, files_with_suffix, require_folder, with_label_maps

SPLIT_FOLDERS = {"train": "train2017", "validation": "val2017"}
IMAGES = {"train": 118_287, "validation": 5_000}   # COCO 2017, and the stuff+thing maps of each
TRAIN_RESCALE, CROP = 296, 256                    # the original's sizes (configs/coco_cond_stage.yaml)


def coco_images(root: str | Path, split: str) -> list[Path]:
    """The COCO 2017 images of a split, sorted by name: ``<root>/{train2017,val2017}/*.jpg``."""
    root = Path(root)
    folder = require_folder(root / SPLIT_FOLDERS[split],
                            f"COCO 2017's {SPLIT_FOLDERS[split]}/ image folder in {root} (train2017/ and val2017/ "
                            f"from cocodataset.org)")
    return files_with_suffix(folder, (".jpg",))


def coco_stuff_images(root: str | Path, stuffthing_root: str | Path, split: str, complete: bool = True,
                      synset: str = "coco") -> list[SourceImage]:
    """The images of a split with their COCO-Stuff stuff+thing label maps; every image needs its map."""
    root, maps_root = Path(root), Path(stuffthing_root)
    images = coco_images(root, split)
    check_count(len(images), IMAGES[split], complete, f"COCO {split} images (.jpg)", root / SPLIT_FOLDERS[split],
                "data.coco_stuff")
    maps = require_folder(maps_root / SPLIT_FOLDERS[split],
                          f"the {SPLIT_FOLDERS[split]}/ folder of COCO-Stuff's stuff+thing label PNGs in "
                          f"{maps_root} (stuffthingmaps_trainval2017.zip unpacked there)")
    return with_label_maps(images, maps, synset, f"COCO {split} images have no label map")
