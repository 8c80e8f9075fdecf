"""The conditional builders: a scene's objects (and the crop) as a token sequence, and back.

The original's taming/data/conditional_builder/{objects_center_points,objects_bbox}.py,
reproduced token for token (tests/test_scene_objects.py checks the reference set):

* a coordinate (x, y) in [0, 1]^2 is one token on a grid of ``no_sections =
  int(sqrt(no_tokens))`` steps per side: ``round(y * (n-1)) * n + round(x * (n-1))``
  with Python's ``round`` (round half to even, on float64: a full-width region's centre
  0.5 * 89 = 44.5 becomes 44);
* an object is its representation ``category_no + no_object_classes * modifier`` (bit 0:
  ``is_group_of is True`` when use_group_parameter; bits 1-3: occluded, depiction, inside
  when use_additional_parameters) followed by its centre (objects_center_points) or its
  top-left and bottom-right corners (objects_bbox);
* ``build`` keeps the first ``no_max_objects`` annotations, drops those whose box does not
  overlap the crop, pads with the none token ``no_tokens - 1`` and, with ``encode_crop``,
  appends the crop's two corner tokens; with encode_crop the boxes stay in the image's
  frame (clamped to it), otherwise they are rescaled into the crop's; a horizontal flip
  mirrors boxes and crop.

Quirks of the original kept for compatibility (the reference README lists them):
* flags are tested with ``is True``: COCO's ``iscrowd`` is the integer 1, so the crowd flag
  is never encoded for COCO (use_group_parameter has no effect there); Open Images' flags
  are booleans and are encoded;
* round half to even, as above (round half up gives other tokens for 76 of the
  reference set's 1188 centre coordinates);
* clamping: ``x0 = clamp(x0)``, ``w = min(w, 1 - x0)``, so a box starting left of the
  image keeps its full width;
* a plot's labels end with a space when the object has no flags ("person ").
What is not kept: the original's ``build`` shuffles the objects in place with the global
``random`` (each access reorders the dataset's stored list); here ``build`` never mutates
its input and shuffles only with the ``rng`` it is given (tokenize gives each row its own).
"""
from __future__ import annotations

import math
from itertools import cycle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tasks.data.objects.annotations import FULL_CROP, Annotation, BoundingBox

# tab10, as the original's plots (taming/data/conditional_builder/utils.py)
COLOR_PALETTE = [(30, 118, 179), (255, 126, 13), (43, 159, 43), (213, 38, 39), (147, 102, 188),
                 (139, 85, 74), (226, 118, 193), (126, 126, 126), (187, 188, 33), (22, 189, 206)]
BLACK, GRAY_75, WHITE = (0, 0, 0), (63, 63, 63), (255, 255, 255)
# the font the original names; where it is not installed, Pillow's own scalable font
LATO = Path("/usr/share/fonts/truetype/lato/Lato-Regular.ttf")


def intersection_area(a: BoundingBox, b: BoundingBox) -> float:
    x_overlap = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    y_overlap = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return x_overlap * y_overlap


def horizontally_flip_bbox(bbox: BoundingBox) -> BoundingBox:
    return 1 - (bbox[0] + bbox[2]), bbox[1], bbox[2], bbox[3]


def rescale_annotations(annotations: list[Annotation], crop: BoundingBox, flip: bool) -> list[Annotation]:
    """Boxes in the crop's frame, clamped to it (and mirrored), as the original's."""
    def clamp(x: float) -> float:
        return max(min(x, 1.0), 0.0)

    def rescale(bbox: BoundingBox) -> BoundingBox:
        x0 = clamp((bbox[0] - crop[0]) / crop[2])
        y0 = clamp((bbox[1] - crop[1]) / crop[3])
        w = min(bbox[2] / crop[2], 1 - x0)
        h = min(bbox[3] / crop[3], 1 - y0)
        if flip:
            x0 = 1 - (x0 + w)
        return x0, y0, w, h

    return [a._replace(bbox=rescale(a.bbox)) for a in annotations]


def filter_annotations(annotations: list[Annotation], crop: BoundingBox) -> list[Annotation]:
    return [a for a in annotations if intersection_area(a.bbox, crop) > 0.0]


def additional_parameters_string(annotation: Annotation) -> str:
    """'(g,o,d,i)' for the flags that are set, '' for none (the original's short form)."""
    flags = [letter for letter, on in (("g", annotation.is_group_of), ("o", annotation.is_occluded),
                                       ("d", annotation.is_depiction), ("i", annotation.is_inside)) if on]
    return f"({','.join(flags)})" if flags else ""


def absolute_bbox(bbox: BoundingBox, width: int, height: int) -> tuple[int, int, int, int]:
    return (int(bbox[0] * width), int(bbox[1] * height), int((bbox[0] + bbox[2]) * width),
            int((bbox[1] + bbox[3]) * height))


def plot_font_size(font_size: int | None, figure_size: tuple[int, int]) -> int:
    if font_size is not None:
        return font_size
    return 15 if max(figure_size) >= 512 else 12 if max(figure_size) >= 256 else 10


def circle_size(figure_size: tuple[int, int]) -> int:
    return 4 if max(figure_size) >= 512 else 3 if max(figure_size) >= 256 else 2


def plot_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(LATO), size=size) if LATO.is_file() else ImageFont.load_default(size=size)


def _rectangle(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], **kwargs) -> None:
    x0, y0, x1, y1 = box   # a sequence a model wrote may hold a corner pair the wrong way round
    draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), **kwargs)


class ObjectsCenterPointsBuilder:
    """Objects as (representation, centre token); the crop's two corners last."""
    name = "objects_center_points"
    object_descriptor_length = 2

    def __init__(self, no_object_classes: int, no_max_objects: int, no_tokens: int, encode_crop: bool,
                 use_group_parameter: bool, use_additional_parameters: bool):
        self.no_object_classes, self.no_max_objects, self.no_tokens = no_object_classes, no_max_objects, no_tokens
        self.encode_crop = encode_crop
        self.use_group_parameter, self.use_additional_parameters = use_group_parameter, use_additional_parameters
        self.no_sections = int(math.sqrt(no_tokens))
        modifiers = (2 if use_group_parameter else 1) * (8 if use_additional_parameters else 1)
        if no_object_classes < 1 or no_max_objects < 1 or self.no_sections < 2:
            raise ValueError(f"need classes >= 1, objects >= 1 and no_tokens >= 4, got {no_object_classes}, "
                             f"{no_max_objects}, {no_tokens}")
        if no_object_classes * modifiers > self.none:
            raise ValueError(f"{no_object_classes} classes x {modifiers} flag combinations need more than "
                             f"no_tokens = {no_tokens} tokens (the last one, {self.none}, means no object)")

    @property
    def none(self) -> int:
        return self.no_tokens - 1

    @property
    def embedding_dim(self) -> int:
        """The sequence length."""
        return self.no_max_objects * self.object_descriptor_length + (2 if self.encode_crop else 0)

    # ---- coordinates

    def tokenize_coordinates(self, x: float, y: float) -> int:
        x_discrete = int(round(x * (self.no_sections - 1)))
        y_discrete = int(round(y * (self.no_sections - 1)))
        return y_discrete * self.no_sections + x_discrete

    def coordinates_from_token(self, token: int) -> tuple[float, float]:
        x, y = token % self.no_sections, token // self.no_sections
        return x / (self.no_sections - 1), y / (self.no_sections - 1)

    def bbox_from_token_pair(self, token1: int, token2: int) -> BoundingBox:
        x0, y0 = self.coordinates_from_token(token1)
        x1, y1 = self.coordinates_from_token(token2)
        return x0, y0, x1 - x0, y1 - y0

    def token_pair_from_bbox(self, bbox: BoundingBox) -> tuple[int, int]:
        return (self.tokenize_coordinates(bbox[0], bbox[1]),
                self.tokenize_coordinates(bbox[0] + bbox[2], bbox[1] + bbox[3]))

    # ---- objects

    def object_representation(self, annotation: Annotation) -> int:
        modifier = 0
        if self.use_group_parameter:
            modifier |= 1 * (annotation.is_group_of is True)
        if self.use_additional_parameters:
            modifier |= 2 * (annotation.is_occluded is True)
            modifier |= 4 * (annotation.is_depiction is True)
            modifier |= 8 * (annotation.is_inside is True)
        return annotation.category_no + self.no_object_classes * modifier

    def representation_to_annotation(self, representation: int) -> Annotation:
        modifier = representation // self.no_object_classes
        return Annotation(area=None, image_id=None, bbox=None, category_id=None,
                          category_no=representation % self.no_object_classes,
                          is_group_of=bool((modifier & 1) * self.use_group_parameter),
                          is_occluded=bool((modifier & 2) * self.use_additional_parameters),
                          is_depiction=bool((modifier & 4) * self.use_additional_parameters),
                          is_inside=bool((modifier & 8) * self.use_additional_parameters))

    def _object_tokens(self, annotation: Annotation) -> tuple[int, ...]:
        x0, y0, w, h = annotation.bbox
        return self.object_representation(annotation), self.tokenize_coordinates(x0 + w / 2, y0 + h / 2)

    def _decode_object(self, tokens: Sequence[int]):
        return self.coordinates_from_token(tokens[1])

    # ---- sequences

    def build(self, annotations: Sequence[Annotation], crop: BoundingBox | None = None, flip: bool = False,
              rng=None) -> list[int]:
        """The token sequence (``embedding_dim`` ints) of a scene's annotations, seen through
        ``crop`` (None: the whole image), mirrored if ``flip``. ``rng`` (random.Random):
        shuffle the object order (the original always shuffles; None keeps the order given)."""
        annotations = list(annotations)[:self.no_max_objects]
        crop = crop or FULL_CROP
        if rng is not None:
            rng.shuffle(annotations)
        annotations = filter_annotations(annotations, crop)
        if self.encode_crop:
            annotations = rescale_annotations(annotations, FULL_CROP, flip)
            if flip:
                crop = horizontally_flip_bbox(crop)
            extra = list(self.token_pair_from_bbox(crop))
        else:
            annotations = rescale_annotations(annotations, crop, flip)
            extra = []
        empty = (self.none,) * self.object_descriptor_length
        objects = [self._object_tokens(a) for a in annotations]
        objects += [empty] * (self.no_max_objects - len(objects))
        tokens = [t for descriptor in objects for t in descriptor] + extra
        if len(tokens) != self.embedding_dim or not all(0 <= t < self.no_tokens for t in tokens):
            raise ValueError(f"a sequence of {len(tokens)} tokens in [{min(tokens)}, {max(tokens)}]: expected "
                             f"{self.embedding_dim} in [0, {self.no_tokens}) (a box outside [0, 1]?)")
        return tokens

    def inverse_build(self, tokens: Sequence[int]) -> tuple[list[tuple], BoundingBox | None]:
        """([(representation, centre (x, y) or box (x0, y0, w, h))...], crop box or None)."""
        tokens = [int(t) for t in tokens]
        if len(tokens) != self.embedding_dim:
            raise ValueError(f"expected {self.embedding_dim} tokens, got {len(tokens)}")
        crop = None
        if self.encode_crop:
            crop = self.bbox_from_token_pair(tokens[-2], tokens[-1])
            tokens = tokens[:-2]
        n = self.object_descriptor_length
        groups = [tokens[i:i + n] for i in range(0, len(tokens), n)]
        return [(g[0], self._decode_object(g)) for g in groups if g[0] != self.none], crop

    def plot(self, tokens: Sequence[int], label_for_category_no: Callable[[int], str], figure_size: tuple[int, int],
             line_width: int = 3, font_size: int | None = None) -> np.ndarray:
        """The scene a sequence describes as a picture (H, W, 3) uint8 of ``figure_size``
        (width, height): each object's centre (or box) and label, and the crop's frame."""
        picture = Image.new("RGB", figure_size, WHITE)
        draw = ImageDraw.Draw(picture)
        font = plot_font(plot_font_size(font_size, figure_size))
        width, height = picture.size
        objects, crop = self.inverse_build(tokens)
        for (representation, where), color in zip(objects, cycle(COLOR_PALETTE)):
            annotation = self.representation_to_annotation(representation)
            label = label_for_category_no(annotation.category_no) + " " + additional_parameters_string(annotation)
            self._draw_object(draw, where, label, color, width, height, line_width, font, figure_size)
        if crop is not None:
            _rectangle(draw, absolute_bbox(crop, width, height), outline=GRAY_75, width=line_width)
        return np.asarray(picture)

    def _draw_object(self, draw, centre, label, color, width, height, line_width, font, figure_size) -> None:
        x, y = centre[0] * width, centre[1] * height
        r = circle_size(figure_size)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color, width=0)
        draw.text((x, y), label, anchor="md", fill=BLACK, font=font)


class ObjectsBoundingBoxBuilder(ObjectsCenterPointsBuilder):
    """Objects as (representation, top-left token, bottom-right token); the crop's corners last."""
    name = "objects_bbox"
    object_descriptor_length = 3

    def _object_tokens(self, annotation: Annotation) -> tuple[int, ...]:
        return (self.object_representation(annotation), *self.token_pair_from_bbox(annotation.bbox))

    def _decode_object(self, tokens: Sequence[int]):
        return self.bbox_from_token_pair(tokens[1], tokens[2])

    def _draw_object(self, draw, bbox, label, color, width, height, line_width, font, figure_size) -> None:
        box = absolute_bbox(bbox, width, height)
        _rectangle(draw, box, outline=color, width=line_width)
        draw.text((box[0] + line_width, box[1] + line_width), label, anchor="la", fill=BLACK, font=font)


BUILDERS = {b.name: b for b in (ObjectsBoundingBoxBuilder, ObjectsCenterPointsBuilder)}
