"""Pictures in and out: decoding to RGB, model tensors to uint8, colours for label maps,
and grids of images for people to look at."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def load_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8; converts any decodable mode or format to RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8: a fixed colour per label id, the same in every picture."""
    return np.random.default_rng(0).integers(0, 256, (n, 3), dtype=np.uint8)


def to_uint8(x):
    """Images in [-1, 1] (any shape, torch) -> uint8 in [0, 255], rounded as a PNG stores them."""
    import torch

    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_rgb_arrays(x, kind: str = "image") -> np.ndarray:
    """Model-space tensors (B, C, H, W) -> (B, H, W, 3) uint8 pictures: RGB images as they
    are, one channel (depth) as grey, segmentation logits or one-hot maps as palette colours."""
    x = x.detach().float().cpu()
    if kind == "segmentation":
        return palette(max(256, x.shape[1]))[x.argmax(1).numpy()]
    rgb = to_uint8(x)
    if rgb.shape[1] == 1:
        rgb = rgb.expand(-1, 3, -1, -1)
    return rgb.permute(0, 2, 3, 1).numpy()


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer label ids -> (H, W, 3) palette colours."""
    return palette()[np.asarray(labels).clip(0, 255)]


def make_grid(rows: Sequence[Sequence[np.ndarray | None]], tile: int | None = None, lead: int = 0,
              gap: int = 2, row_labels: Sequence[str] = (), title: str = "") -> np.ndarray:
    """Rows of (H, W, 3) uint8 images (None: an empty slot) -> one (H', W', 3) picture.

    ``tile``: every image is scaled (nearest, so pixels stay crisp) to ``tile`` px square;
    None keeps the first image's size. A wider gap follows the first ``lead`` columns
    (e.g. the conditioning and the real image before the samples). ``row_labels`` are
    written left of their rows and ``title`` above the grid."""
    first = next(im for row in rows for im in row if im is not None)
    h, w = (tile, tile) if tile else first.shape[:2]
    cols = max(len(r) for r in rows)
    extra = 3 * gap if 0 < lead < cols else 0
    canvas = np.full((gap + len(rows) * (h + gap), gap + cols * (w + gap) + extra, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            if im is None:
                continue
            if im.shape[:2] != (h, w):
                im = np.asarray(Image.fromarray(im).resize((w, h), Image.NEAREST))
            y, x = gap + r * (h + gap), gap + c * (w + gap) + (extra if c >= lead else 0)
            canvas[y:y + h, x:x + w] = im
    return _with_labels(canvas, row_labels, title, h, gap) if row_labels or title else canvas


LABEL_PX = 14  # text height of grid labels


def _with_labels(grid: np.ndarray, row_labels: Sequence[str], title: str, row_h: int, gap: int) -> np.ndarray:
    """``grid`` on a white page with a title line above it and a label left of each row."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=LABEL_PX)
    pad = LABEL_PX // 2
    left = max((int(font.getlength(t)) for t in row_labels), default=0) + (2 * pad if row_labels else 0)
    top = LABEL_PX + 2 * pad if title else 0
    page = Image.new("RGB", (left + grid.shape[1], top + grid.shape[0]), "white")
    page.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(page)
    if title:
        draw.text((left + gap, pad), title, fill=(30, 30, 30), font=font)
    for r, text in enumerate(row_labels):
        draw.text((pad, top + gap + r * (row_h + gap) + row_h // 2), text, fill=(30, 30, 30), font=font, anchor="lm")
    return np.asarray(page)
