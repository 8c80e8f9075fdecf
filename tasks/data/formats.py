"""On-disk formats shared by stages, exactly as the original project stores them.

Depth: float32 depth stored *bytewise* in an RGBA PNG (the original's
``depth_to_rgba`` / ``rgba_to_depth``): each float's 4 bytes become one pixel's
R, G, B, A. Lossless, so ``rgba_to_depth(depth_to_rgba(x))`` is ``x`` bit for bit.
Segmentation: a uint8 label PNG (COCO-Stuff 182 classes; 255 = unlabelled).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.files import atomic_path


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
    with Image.open(path) as im:
        if im.mode != "RGBA":
            raise ValueError(f"{path}: depth PNG must be RGBA (float32 bytes), got mode {im.mode}")
        return rgba_to_depth(np.asarray(im))


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    assert labels.dtype == np.uint8 and labels.ndim == 2, (labels.dtype, labels.shape)
    with atomic_path(path) as tmp:
        Image.fromarray(labels, mode="L").save(tmp, format="PNG")


def load_label_png(path: str | Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: label PNG must be 8-bit single channel, got mode {im.mode}")
        return np.asarray(im, dtype=np.uint8).copy()
