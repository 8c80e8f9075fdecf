"""The original's crops of an annotated-objects image, and the crop box each one reports.

The conditioning encodes where the crop lies in the image (``encode_crop``), so the box
must be computed exactly as the original computes it (taming/data/image_transforms.py,
annotated_objects_dataset.setup_transform), relative to the image:

* ``center``: torchvision ``Resize(size)`` (shorter side ``size``, longer side
  ``int(size * long / short)``), then a centre crop; the box comes from the resized size:
  landscape ``(0.5 - (h/w)/2, 0, h/w, 1)``, else ``(0, 0.5 - (w/h)/2, 1, w/h)``. The pixels
  are cut at torchvision's offset ``int(round((W - size) / 2))``, which the box does not
  round: a sub-pixel difference the original has too.
* ``random-1d``: the same resize, then a ``size`` x ``size`` crop at a uniform offset.
* ``random-2d``: a square of uniform side in [size, min(w, h)] at a uniform offset of the
  original image, then resized to ``size`` (a smaller image: its shorter side).
* ``none``: the whole image squeezed to ``size`` x ``size``; no box (the builder's full crop).

Randomness comes from torch's generator (seeded by the caller: tokenize seeds every row).
Pixels are resized with PIL's bilinear filter (the original: torchvision on tensors); the
contract with the original is the boxes, not the pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tasks.data.objects.annotations import BoundingBox

CROP_METHODS = ("none", "center", "random-1d", "random-2d")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision Resize(size)'s output (width, height): the shorter side becomes ``size``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def centre_crop_box(width: int, height: int) -> BoundingBox:
    """The original's CenterCropReturnCoordinates.get_bbox_of_center_crop of a (resized) size."""
    if width > height:
        w = height / width
        return 0.5 - w / 2, 0.0, w, 1.0
    h = width / height
    return 0.0, 0.5 - h / 2, 1.0, h


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform in [low, high], both included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def crop_box(method: str, width: int, height: int, size: int,
             generator: torch.Generator | None = None) -> tuple[BoundingBox | None, tuple]:
    """(the box the original reports, how to cut the pixels) for an image of width x height.
    The cut is ("resize", (w, h), (left, top)) for methods that resize first, then crop
    ``size`` x ``size`` at (left, top); ("square", side, (left, top)) for random-2d; ("squeeze",)
    for none."""
    if method == "none":
        return None, ("squeeze",)
    if method == "random-2d":
        largest = min(width, height)
        side = largest if largest <= size else _randint(size, largest, generator)
        top, left = _randint(0, height - side, generator), _randint(0, width - side, generator)
        return (left / width, top / height, side / width, side / height), ("square", side, (left, top))
    w, h = resized_size(width, height, size)
    if method == "center":
        return centre_crop_box(w, h), ("resize", (w, h), (int(round((w - size) / 2.0)), int(round((h - size) / 2.0))))
    if method == "random-1d":
        top, left = _randint(0, h - size, generator), _randint(0, w - size, generator)
        return (left / w, top / h, size / w, size / h), ("resize", (w, h), (left, top))
    raise ValueError(f"crop method {method!r}: expected one of {', '.join(CROP_METHODS)}")


def cut(image: Image.Image, how: tuple, size: int) -> np.ndarray:
    """The crop ``crop_box`` described, as an RGB uint8 array (H, W, 3)."""
    if how[0] == "squeeze":
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    if how[0] == "square":
        side, (left, top) = how[1], how[2]
        square = image.crop((left, top, left + side, top + side))
        return np.asarray(square if side == size else square.resize((size, size), Image.BILINEAR))
    (w, h), (left, top) = how[1], how[2]
    if (w, h) != image.size:
        image = image.resize((w, h), Image.BILINEAR)
    return np.asarray(image.crop((left, top, left + size, top + size)))
