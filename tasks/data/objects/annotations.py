"""What an annotated-objects dataset holds, with the original's field names and types
(taming/data/helper_types.py), so records and tests read like the original's.

Boxes are ``(x0, y0, width, height)`` relative to the image (floats in [0, 1]). The flags
keep the types each dataset gives them: COCO's ``is_group_of`` is the raw integer
``iscrowd`` (0 or 1), Open Images' flags are booleans. The builders test flags with
``is True``, as the original does, so a COCO crowd flag is never encoded (see builders.py).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

BoundingBox = Tuple[float, float, float, float]   # x0, y0, w, h, relative to the image
FULL_CROP: BoundingBox = (0.0, 0.0, 1.0, 1.0)
FLAGS = ("is_group_of", "is_occluded", "is_depiction", "is_inside")   # what the builders can encode


class Annotation(NamedTuple):
    """One object. Field order and defaults are the original's."""
    area: float
    image_id: object          # COCO: the int from the JSON; Open Images: the ImageID string
    bbox: BoundingBox
    category_no: int          # class index (CategoryTable)
    category_id: str
    id: Optional[int] = None
    source: Optional[str] = None
    confidence: Optional[float] = None
    is_group_of: object = None
    is_truncated: object = None
    is_occluded: object = None
    is_depiction: object = None
    is_inside: object = None


class ImageInfo(NamedTuple):
    """One image of a split: its id (the dataset's key, a string), file name (a plain
    name inside the split's image folder) and size (width, height; None where the
    annotations do not give it, as Open Images')."""
    id: str
    file_name: str
    size: Optional[Tuple[int, int]] = None
