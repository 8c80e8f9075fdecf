"""On-disk formats shared by stages, exactly as the original project stores them.

Depth: float32 depth stored *bytewise* in an RGBA PNG (the original's
``depth_to_rgba`` / ``rgba_to_depth``): each float's 4 bytes become one pixel's
R, G, B, A. Lossless, so ``rgba_to_depth(depth_to_rgba(x))`` is ``x`` bit for bit.
Depth maps made elsewhere as greyscale PNGs (8 or 16 bit, e.g. MiDaS's ``write_depth``)
are read too, as the fraction of their full scale (tasks/data/images.py): the datasets
normalise depth per image, so only the relative values matter.
Segmentation: a uint8 label PNG (COCO-Stuff 182 classes; 255 = unlabelled).

Both are read through ``open_image`` (accepted formats, pixel limit, errors naming the file).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.files import atomic_path
from tasks.data.images import GREY_FULL_SCALE, ImageRefused, grey_fraction, open_image


def depth_to_rgba(x: np.ndarray) -> np.ndarray:
    assert x.dtype == np.float32 and x.ndim == 2, (x.dtype, x.shape)
    return np.ascontiguousarray(x).view(np.uint8).reshape(x.shape + (4,)).copy()


def rgba_to_depth(x: np.ndarray) -> np.ndarray:
    assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 4, (x.dtype, x.shape)
    return np.ascontiguousarray(x).view(np.float32).reshape(x.shape[:2]).copy()


def save_depth_png(path: str | Path, depth: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(depth_to_rgba(depth.astype(np.float32, copy=False)), mode="RGBA").save(tmp, format="PNG")


def load_depth_png(path: str | Path) -> np.ndarray:
    """(H, W) float32: the exact floats of an RGBA-packed map, or a greyscale map's fraction of full scale."""
    with open_image(path) as im:
        if im.mode == "RGBA":
            return rgba_to_depth(np.asarray(im))
        if im.mode in GREY_FULL_SCALE:
            return grey_fraction(im)
        raise ImageRefused(str(path), f"a depth map is an RGBA PNG of float32 bytes or a greyscale image, "
                                      f"got mode {im.mode}")


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    assert labels.dtype == np.uint8 and labels.ndim == 2, (labels.dtype, labels.shape)
    with atomic_path(path) as tmp:
        Image.fromarray(labels, mode="L").save(tmp, format="PNG")


def load_label_png(path: str | Path) -> np.ndarray:
    with open_image(path) as im:
        if im.mode not in ("L", "P"):
            raise ImageRefused(str(path), f"label PNG must be 8-bit single channel, got mode {im.mode}")
        return np.asarray(im, dtype=np.uint8).copy()
