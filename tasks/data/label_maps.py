"""Label maps that data sources ship, and how the models read them.

COCO-Stuff's stuff+thing PNGs hold 0-based ids 0..181 and 255 for unlabelled; the original
reads them with n_labels=183 and shift_segmentation (taming/data/coco.py): +1 in uint8, so
unlabelled becomes 0. ADE20k's SceneParsing PNGs hold 0 = unknown and the 150 classes 1..150,
read as stored with n_labels=151 (taming/data/ade20k.py). ``PROVIDED_MAPS`` says which
sources ship which maps, so validation lets the pipeline use them instead of running an
annotator and makes the segmentation VQGAN one-hot exactly their labels. (Plain Python:
the params schema imports it.)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelMaps:
    """A source's label PNGs: stored ids become ``(id + shift) % 256``, in 0..n_labels-1."""
    n_labels: int
    shift: int
    description: str

    def convert(self, labels):
        """uint8 ids as stored -> the labels the models one-hot (uint8 arithmetic wraps: 255 + 1 = 0)."""
        return labels + labels.dtype.type(self.shift) if self.shift else labels


# what annotate@segmentation writes with DeepLab v2 trained on COCO-Stuff (the S-FLCKR maps)
DEEPLAB_COCOSTUFF = LabelMaps(182, 0, "DeepLab v2 COCO-Stuff predictions 0..181 (the S-FLCKR maps)")
COCO_STUFF = LabelMaps(183, 1, "COCO-Stuff stuff+thing ids + 1, 0 = unlabelled (stuffthingmaps_trainval2017)")
ADE20K = LabelMaps(151, 0, "ADE20k SceneParsing: 0 = unknown, 1..150 the classes (ADEChallengeData2016)")

# data.source -> {map kind: its maps}
PROVIDED_MAPS: dict[str, dict[str, LabelMaps]] = {"coco_stuff": {"segmentation": COCO_STUFF},
                                                        "ade20k": {"segmentation": ADE20K}}
