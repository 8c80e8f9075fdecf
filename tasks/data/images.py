"""Pictures in and out: the one way the product opens an image file, decoding to RGB,
model tensors to uint8, colours for label maps, and grids of images for people to look at.

Image files are untrusted (archives, file lists). ``open_image`` is the only place that
opens one (tests/test_layout.py keeps it so): it reads the header with the decoders of
the accepted formats only (tasks/data/limits.py: JPEG, PNG, BMP, WebP), so an EPS file
under a .JPEG name never reaches Ghostscript; it refuses more than MAX_IMAGE_PIXELS
before any pixel is decoded; it refuses FIFOs and devices; and every failure is an
``ImageRefused`` naming the file and the reason.

High bit depths: PIL's ``convert`` clips 16-bit values at 255, so a 16-bit PNG would
come out almost white. ``grey_fraction`` reads single-channel images as a fraction of
their full scale (8-bit: v / 255; 16-bit, PIL modes I;16, I;16B and I: v / 65535;
float, mode F: v clipped to [0, 1]); RGB pictures are that fraction x 255, rounded
(so a 16-bit value v becomes round(v / 257)). 16-bit RGB PNGs are read by PIL as their
high bytes already.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.files import open_regular
from tasks.data.limits import ACCEPTED_IMAGE_FORMATS, MAX_IMAGE_PIXELS
from tasks.runtime.errors import StageError

# single-channel modes read as fractions of their full scale (see the module docstring)
GREY_FULL_SCALE = {"L": 255, "I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1}


class ImageRefused(StageError, ValueError):
    """An image file is refused (format, size, not a regular file) or cannot be decoded.
    ``reason`` is the reason alone, for rejection manifests; the message names the file."""

    def __init__(self, where: str, reason: str = ""):
        super().__init__(where, reason)     # both args: the exception pickles (DataLoader workers)
        self.where, self.reason = where, reason

    def __str__(self) -> str:
        return f"{self.where}: cannot read image: {self.reason}" if self.reason else self.where


@contextlib.contextmanager
def open_image(source: str | Path | bytes, where: str | None = None) -> Iterator[Image.Image]:
    """A file or bytes opened as an image of an accepted format and size; its header is read,
    its pixels not yet. Decoding errors inside the block (a truncated file) become
    ImageRefused as well. ``where`` names the source in messages (default: the path)."""
    where = where or ("image bytes" if isinstance(source, bytes) else str(source))
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)
    except OSError as e:
        raise ImageRefused(where, e.strerror or str(e).removeprefix(f"{source}: ")) from None
    with fp:
        try:
            im = Image.open(fp, formats=ACCEPTED_IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise ImageRefused(where, _what_it_is(fp)) from None
        except Image.DecompressionBombError as e:
            raise ImageRefused(where, f"more than {MAX_IMAGE_PIXELS} pixels ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageRefused(where, f"truncated or corrupt: {e}") from None
        with im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageRefused(where, f"{width}x{height} is more than {MAX_IMAGE_PIXELS} pixels")
            try:
                yield im
            except ImageRefused:
                raise
            except (OSError, SyntaxError, ValueError, EOFError) as e:  # raised while decoding
                raise ImageRefused(where, f"truncated or corrupt: {e}") from None


def _what_it_is(fp) -> str:
    """Why no accepted decoder took a file: empty, a broken header, another format (named
    from its magic bytes by PIL's prefix tests, which decode nothing), or not an image."""
    fp.seek(0)
    prefix = fp.read(16)
    if not prefix:
        return "zero-byte file"
    Image.init()
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            matches = accept is not None and accept(prefix)
        except Exception:  # noqa: BLE001 - a prefix test choking on a short file: no match
            continue
        if matches:
            if fmt in ACCEPTED_IMAGE_FORMATS:
                return f"truncated or corrupt: unreadable {fmt} header"
            return f"format {fmt} not accepted (accepted: {', '.join(ACCEPTED_IMAGE_FORMATS)})"
    return "not an image"


def grey_fraction(im: Image.Image) -> np.ndarray:
    """(H, W) float32 in [0, 1]: a single-channel image as a fraction of its full scale."""
    assert im.mode in GREY_FULL_SCALE, im.mode
    return np.clip(np.asarray(im).astype(np.float32) / GREY_FULL_SCALE[im.mode], 0.0, 1.0)


def to_rgb(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of any opened image; high bit depths are scaled, not clipped."""
    if im.mode in GREY_FULL_SCALE and im.mode != "L":
        grey = np.round(grey_fraction(im) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def load_rgb(path: str | Path | bytes, where: str | None = None) -> np.ndarray:
    """(H, W, 3) uint8 of an image file (or its bytes, named ``where``) of an accepted format;
    any mode is converted to RGB."""
    with open_image(path, where) as im:
        return to_rgb(im)


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
