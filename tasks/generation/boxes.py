"""Scene models: a layout of boxes and labels as the transformer's condition, and its picture.

A scene model is conditioned on the token sequence a conditional builder makes of the
objects seen through a crop (tasks/data/objects/builders.py; the builder, its parameters
and the categories are the model's ``SamplingModel.scene``). The output shows a ``region``
of the layout (boxes are relative to the layout's frame): the whole layout for user boxes
and the original's make_scene_samples.py, the validation crop of an image in the ``sample``
stage. At the training size that is one sequence, with the region as the crop. A larger
output (square or not) is sampled with a sliding window, as make_scene_samples.py at
512x512: every window position gets its own sequence, whose crop is the part of the region
under that window, so objects outside the window drop out and the crop tokens say where
the window is.
"""
from __future__ import annotations

import numpy as np
import torch

from tasks.data.objects.annotations import FULL_CROP, Annotation, BoundingBox
from tasks.data.objects.builders import filter_annotations, rescale_annotations
from tasks.generation.conditions import Condition
from tasks.generation.model import SamplingModel
from tasks.runtime.errors import StageError


def window_crop(region: BoundingBox, top: int, left: int, grid: tuple[int, int],
                window: tuple[int, int]) -> BoundingBox:
    """The crop of the window whose top-left token is (top, left) on a token grid (H, W)
    that shows ``region``: (left/W, top/H, w/W, h/H) of it, as make_scene_samples.py's
    get_crop_coordinates for the whole layout."""
    (H, W), (h, w) = grid, window
    x, y, rw, rh = region
    return x + left / W * rw, y + top / H * rh, w / W * rw, h / H * rh


def scene_tokens(model: SamplingModel, annotations: list[Annotation], grid: tuple[int, int],
                 region: BoundingBox = FULL_CROP) -> torch.Tensor:
    """The condition tokens of a layout on a token grid: (1, n) on the training grid, else
    (1, H-h+1, W-w+1, n), one sequence per window position (Net2NetTransformer.sample_indices_sliding)."""
    builder = model.scene.make()
    if len(annotations) > builder.no_max_objects:
        raise StageError(f"{len(annotations)} objects: {model.name} takes at most {builder.no_max_objects}")
    if grid == model.window:
        tokens = [builder.build(annotations, region)]
        return torch.tensor(tokens, dtype=torch.int64, device=model.device)
    (H, W), (h, w) = grid, model.window
    tokens = [[builder.build(annotations, window_crop(region, i, j, grid, model.window)) for j in range(W - w + 1)]
              for i in range(H - h + 1)]
    return torch.tensor([tokens], dtype=torch.int64, device=model.device)


def scene_picture(model: SamplingModel, annotations: list[Annotation], hw: tuple[int, int],
                  region: BoundingBox = FULL_CROP) -> np.ndarray:
    """The boxes and labels the output shows, drawn at its size (H, W, 3), as the model's
    builder quantises them (the original's plot of a full-crop sequence)."""
    scene = model.scene
    builder, categories = scene.make(), scene.categories
    shown = rescale_annotations(filter_annotations(list(annotations), region), region, flip=False)

    def label(no: int) -> str:
        return categories.name(no) if no < len(categories) else f"class {no}"
    return builder.plot(builder.build(shown[:builder.no_max_objects], FULL_CROP), label, (hw[1], hw[0]))


def scene_condition(model: SamplingModel, name: str, annotations: list[Annotation], hw: tuple[int, int],
                    region: BoundingBox = FULL_CROP, class_label: int | None = None) -> Condition:
    """A layout as a condition of an output of (height, width), with its picture."""
    tokens = scene_tokens(model, annotations, model.grid(*hw), region)
    return Condition(name, tokens, scene_picture(model, annotations, hw, region), class_label)
