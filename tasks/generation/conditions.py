"""What a sample is conditioned on, as the transformer's condition tokens, from inputs a user has.

* a class label (class-conditional models; names: `class_names`);
* nothing (unconditional models);
* the output's own coordinates (coordinate-conditioned models, the paper's FacesHQ);
* a map file on the output grid: a depth map (the pipeline's RGBA float32 PNG, or an
  8/16-bit grey PNG, larger = nearer) or a segmentation label PNG (uint8 ids);
* a photo, annotated on the fly (tasks/generation/photos.py);
* for completion, the top rows of an image, encoded by the first stage: they are kept
  and the rest is sampled.

Maps and images are fitted to the output size as the datasets fit them to a square:
scaled to cover it (bilinear; nearest for labels), then centre-cropped. Depth is
min-max normalised over the whole map first, as the pipeline's D-RIN data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.permuter import Identity
from tasks.data.classes import ClassTable
from tasks.data.datasets import coordinates, normalise_depth
from tasks.data.formats import rgba_to_depth
from tasks.data.images import GREY_FULL_SCALE, grey_fraction, labels_to_rgb, open_image
from tasks.data.label_maps import ADE20K, COCO_STUFF, DEEPLAB_COCOSTUFF
from tasks.generation.model import SamplingModel
from tasks.runtime.errors import StageError


@dataclass
class Condition:
    """One conditioning: `name` is its output folder (a class label, a file's stem; "" for
    none), `tokens` (1, n_c) on the model's device (None: unconditional), `picture` the
    condition as an RGB uint8 picture for people (maps only)."""
    name: str
    tokens: torch.Tensor | None
    picture: np.ndarray | None = None
    class_label: int | None = None


def parse_resolution(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '1280x832' (width x height, as image sizes are written) -> (832, 1280),
    returned as (height, width)."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ValueError(f"{text!r}: expected a side in pixels (256) or WIDTHxHEIGHT (1280x832)")
    width, height = parts
    return height, width


def fit(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Scale `array` (H, W[, C]) to cover (height, width) and centre-crop it: bilinear for
    pictures and float maps, nearest for uint8 label maps (ids must never blend)."""
    h, w = array.shape[:2]
    th, tw = hw
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (nh, nw) != (h, w):
        labels = array.dtype == np.uint8 and array.ndim == 2
        mode = "F" if array.dtype == np.float32 else None
        resample = Image.NEAREST if labels else Image.BILINEAR
        array = np.asarray(Image.fromarray(array, mode=mode).resize((nw, nh), resample))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.array(array[top:top + th, left:left + tw])  # a writable, contiguous copy


# ----------------------------------------------------------------------------- classes

def class_names(n_classes: int, synsets_json: str | Path | None = None) -> list[str]:
    """Human names of labels 0..n-1: from a pipeline's synsets.json when it has as many
    classes as the model, else the ImageNet names for a 1000-class model (the published
    cIN), else "class i"."""
    names = [f"class {i}" for i in range(n_classes)]
    table = ClassTable.read(synsets_json) if synsets_json is not None and Path(synsets_json).is_file() else None
    if table is not None and table.n_classes == n_classes:
        for synset, label in table.labels.items():
            names[label] = table.name(synset)
    elif n_classes == 1000:
        from torchvision.models import ResNet50_Weights  # the standard ImageNet class index

        names = list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return names


def class_condition(model: SamplingModel, label: int) -> Condition:
    if model.kind != "class_label":
        raise StageError(f"{model.name} is conditioned on {model.kind}, not on classes")
    if not 0 <= label < model.n_classes:
        raise StageError(f"class {label}: {model.name} knows classes 0..{model.n_classes - 1}")
    return Condition(str(label), torch.tensor([[label]], device=model.device), class_label=label)


def no_condition(model: SamplingModel) -> Condition:
    if model.kind != "none":
        raise StageError(f"{model.name} is conditioned on {model.kind}: give it "
                         f"{'classes' if model.kind == 'class_label' else 'maps or photos'}")
    return Condition("", None)


def coord_condition(model: SamplingModel, hw: tuple[int, int], name: str = "") -> Condition:
    """A coordinate-conditioned model's condition for an output of (height, width): its own
    coordinates, (row * width + column) / (height * width), as the coordinate tokens. On an
    output larger than the training crops every window sees where it lies in the whole."""
    if model.kind != "coord":
        raise StageError(f"{model.name} is conditioned on {model.kind}, not on coordinates")
    coord = coordinates(*hw)
    with torch.inference_mode():
        tokens = model.net.encode_to_c(torch.from_numpy(coord)[None, None].to(model.device))[1]
    grey = (coord * 255).round().astype(np.uint8)
    return Condition(name, tokens, np.repeat(grey[..., None], 3, axis=2))


# ----------------------------------------------------------------------------- maps

def read_depth(source: str | Path | bytes, where: str | None = None) -> np.ndarray:
    """A depth map file (or its bytes, named ``where``) -> float32 (H, W), larger = nearer:
    the pipeline's RGBA-packed float32 PNG, or a grey 8- or 16-bit PNG (as fractions of its
    full scale: a depth map's scale is relative)."""
    where = where or str(source)
    with open_image(source, where) as im:
        if im.mode == "RGBA":
            depth = rgba_to_depth(np.asarray(im))
        elif im.mode in GREY_FULL_SCALE:
            depth = grey_fraction(im)
        else:
            raise StageError(f"{where}: a depth map is an RGBA float32 PNG (the pipeline's) or a grey "
                             f"8/16-bit PNG, not mode {im.mode}; for a photo use --photos")
    if not np.isfinite(depth).all():
        raise StageError(f"{where}: the depth map has values that are not finite")
    return depth


def read_labels(source: str | Path | bytes, where: str | None = None) -> np.ndarray:
    """A segmentation label PNG (8-bit, one id per pixel; or its bytes) -> uint8 (H, W)."""
    where = where or str(source)
    with open_image(source, where) as im:
        if im.mode not in ("L", "P"):
            raise StageError(f"{where}: a label map is an 8-bit single-channel PNG of label ids, not "
                             f"mode {im.mode}; for a photo use --photos")
        return np.asarray(im, dtype=np.uint8).copy()


def read_map(model: SamplingModel, source: str | Path | bytes, where: str | None = None) -> np.ndarray:
    """The map file (or bytes) the model's conditioning needs: depth or segmentation labels."""
    if model.kind == "depth":
        return read_depth(source, where)
    if model.kind == "segmentation":
        return read_labels(source, where)
    raise StageError(f"{model.name} is conditioned on {model.kind}, not on maps: {where or source}")


def render_map(kind: str, array: np.ndarray) -> np.ndarray:
    """A fitted map as an RGB picture: depth in [-1, 1] as grey (near is bright), labels in palette colours."""
    if kind == "depth":
        grey = ((np.clip(array, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return labels_to_rgb(array)


def encode_maps(model: SamplingModel, maps: list[np.ndarray]) -> torch.Tensor:
    """Fitted maps (depth in [-1, 1], or uint8 labels), all of one size -> condition tokens
    (B, n_c) from the model's condition VQGAN, in float32."""
    if model.kind == "depth":
        x = torch.from_numpy(np.stack(maps)).float()[:, None]
    else:
        labels = np.stack(maps)
        if int(labels.max()) >= model.n_labels:
            raise StageError(f"label id {int(labels.max())} is outside the {model.n_labels} labels "
                             f"the segmentation VQGAN of {model.name} knows")
        x = torch.from_numpy(labels).long()
    with torch.inference_mode():
        return model.net.encode_to_c(x.to(model.device))[1]


def prepare_map(model: SamplingModel, array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A raw map (depth: any scale, larger = nearer; labels) -> fitted to (height, width), depth in [-1, 1]."""
    if model.kind == "depth":
        return fit(normalise_depth(array.astype(np.float32)), hw)
    return fit(array.astype(np.uint8), hw)


# The original's example sets shipped in examples/ (label maps as the models read them) and
# the labels of their maps: COCO-Stuff (shifted), ADE20k, S-FLCKR's DeepLab v2 COCO-Stuff.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_LABELS = {"coco": COCO_STUFF.n_labels, "ade20k": ADE20K.n_labels, "sflckr": DEEPLAB_COCOSTUFF.n_labels}


def shipped_examples(n_labels: int | None) -> Path | None:
    """The shipped label maps (examples/<set>/segmentations) a segmentation model of n_labels reads."""
    for name, labels in EXAMPLE_LABELS.items():
        if labels == n_labels and (EXAMPLES / name / "segmentations").is_dir():
            return EXAMPLES / name / "segmentations"
    return None


def map_condition(model: SamplingModel, path: str | Path, hw: tuple[int, int]) -> Condition:
    """A map file -> its condition on an output of (height, width)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return raw_map_condition(model, path.stem, read_map(model, path), hw)


def raw_map_condition(model: SamplingModel, name: str, raw: np.ndarray, hw: tuple[int, int]) -> Condition:
    """A map as read or annotated (depth: any scale, larger = nearer; labels) -> its condition."""
    fitted = prepare_map(model, raw, hw)
    return Condition(name, encode_maps(model, [fitted]), render_map(model.kind, fitted))


# ----------------------------------------------------------------------------- completion

def keep_token_rows(model: SamplingModel, grid: tuple[int, int], rows: int | None = None,
                    fraction: float | None = None) -> int:
    """How many token rows of the image to keep: `rows` pixel rows (rounded down to whole
    token rows) or a `fraction` of the height (rounded); at least one row is sampled."""
    if (rows is None) == (fraction is None):
        raise ValueError("give either rows or fraction")
    kept = rows // model.downsampling if rows is not None else round(fraction * grid[0])
    if not 0 <= kept < grid[0]:
        raise StageError(f"keeping {rows if rows is not None else fraction} of the height leaves no row to "
                         f"sample: the output has {grid[0]} token rows of {model.downsampling} px")
    return kept


def completion_tokens(model: SamplingModel, rgb: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """An image (H, W, 3) uint8, fitted to (height, width) -> its first-stage tokens (1, h*w), raster."""
    if not isinstance(model.net.permuter, Identity):
        raise StageError(f"{model.name} samples tokens in a permuted order; completing the top rows needs raster order")
    x = torch.from_numpy(fit(rgb, hw)).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    with torch.inference_mode():
        return model.net.first_stage_model.encode(x.to(model.device))[2]
