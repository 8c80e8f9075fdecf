"""Photos as conditions: annotated on the fly with MiDaS (depth) or DeepLab v2
(segmentation), the networks the pipeline's annotation stages run, when their weights
are present (models.weights resolves them: cache, S3 mirror, URL); a clear error
naming `taming weights fetch <name>` when they are not.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.data.images import load_rgb
from tasks.generation.conditions import Condition, raw_map_condition
from tasks.generation.model import SamplingModel
from tasks.runtime.errors import StageError

# the annotation networks a photo can go through, per condition kind (the first is the default)
ANNOTATORS = {"depth": ("midas_v21", "midas_v21_small"), "segmentation": ("deeplabv2_cocostuff",)}


@functools.cache
def _annotation_network(name: str, weights: str | None, device: torch.device):
    from models import deeplab, midas

    return (deeplab.load_deeplab if name.startswith("deeplab") else midas.load_midas)(name, weights).to(device)


def annotate_photo(model: SamplingModel, rgb: np.ndarray, source: str | Path, network: str | None = None,
                   weights: str | Path | None = None) -> np.ndarray:
    """A photo (H, W, 3) uint8 -> the map the model's conditioning needs, from MiDaS or
    DeepLab (`network`, default the first of ANNOTATORS[kind]) with weights resolved by
    models.weights (an explicit `weights` file wins)."""
    from models.weights import WeightsNotFound

    if model.kind not in ANNOTATORS:
        raise StageError(f"{model.name} is conditioned on {model.kind}: photos are for depth or segmentation models")
    network = network or ANNOTATORS[model.kind][0]
    if network not in ANNOTATORS[model.kind]:
        raise StageError(f"annotator {network!r} does not make {model.kind} maps; "
                         f"choose {', '.join(ANNOTATORS[model.kind])}")
    try:
        net = _annotation_network(network, None if weights is None else str(weights), model.device)
    except WeightsNotFound as e:
        raise StageError(f"{source}: annotating a photo with {model.kind} needs the {network} weights; "
                         f"fetch them with `taming weights fetch {network}` (or pass the file with "
                         f"--annotator-weights). {e}") from None
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(model.device)
    with torch.inference_mode():
        if model.kind == "depth":
            from models.midas import predict
            return predict(net, [image])[0].float().cpu().numpy()
        from models.deeplab import segment
        return segment(net, image[None])[0].cpu().numpy()


def photo_condition(model: SamplingModel, path: str | Path, hw: tuple[int, int], network: str | None = None,
                    weights: str | Path | None = None) -> Condition:
    """A photo file -> annotated -> its condition on an output of (height, width)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        rgb = load_rgb(path)
    except (OSError, Image.UnidentifiedImageError) as e:
        raise StageError(f"{path}: cannot read the photo: {e}") from None
    return raw_map_condition(model, path.stem, annotate_photo(model, rgb, path, network, weights), hw)
