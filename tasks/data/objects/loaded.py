"""A loaded split of an annotated-objects dataset, compact, in the original's image order.

The original keeps every annotation as a Python object in a dict keyed by image id
(several GB for Open Images' 14.6 M boxes). Here the loaders (coco.py, open_images.py)
append each annotation they keep as one row of a numpy structured array (``ROW``, 71
bytes), and ``AnnotatedObjects.select`` applies the original's rules:

* image order: the order in which an image's first kept annotation was read (the
  original's dict insertion order), in the file order of the chain the loader reads;
* an annotation counts if its box area is > ``min_object_area``; an image is kept if it
  then has ``min_objects_per_image`` to ``max_objects_per_image`` of them (the original's
  filter_object_number), its annotations in the order read.

``annotations(n)`` builds image n's ``Annotation`` tuples when asked, with the field types
the dataset's own loader gives (``make_annotation``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from tasks.data.objects.annotations import Annotation, ImageInfo
from tasks.data.objects.categories import CategoryTable

NO_FLAG = -1
ROW = np.dtype([("image", "<i4"), ("id", "<i8"), ("category_no", "<i4"), ("bbox", "<f8", (4,)), ("area", "<f8"),
                ("confidence", "<f8"), ("source", "<i2"), ("flags", "i1", (5,))])
# flags: is_group_of, is_truncated, is_occluded, is_depiction, is_inside (NO_FLAG: absent)


class Rows:
    """Rows appended one at a time, stored in chunks of ROW (a list of tuples costs ~10x more)."""

    CHUNK = 1 << 16

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.pending: list[tuple] = []
        self.count = 0

    def append(self, image: int, id_: int, category_no: int, bbox, area: float, confidence: float = np.nan,
               source: int = -1, flags=(NO_FLAG,) * 5) -> None:
        self.pending.append((image, id_, category_no, bbox, area, confidence, source, flags))
        self.count += 1
        if len(self.pending) == self.CHUNK:
            self.chunks.append(np.array(self.pending, dtype=ROW))
            self.pending = []

    def array(self) -> np.ndarray:
        if self.pending:
            self.chunks.append(np.array(self.pending, dtype=ROW))
            self.pending = []
        rows = np.concatenate(self.chunks) if self.chunks else np.empty(0, ROW)
        self.chunks = []
        return rows


class AnnotatedObjects:
    """One split: ``images`` in dataset order, their annotations, the category table."""

    def __init__(self, images: list[ImageInfo], rows: np.ndarray, starts: np.ndarray, categories: CategoryTable,
                 files: Path, make_annotation: Callable[[np.void, ImageInfo], Annotation], stats: dict):
        self.images, self.rows, self.starts = images, rows, starts
        self.categories, self.files, self.make_annotation, self.stats = categories, files, make_annotation, stats

    @classmethod
    def select(cls, rows: np.ndarray, images: list[ImageInfo], categories: CategoryTable, files: Path,
               make_annotation, min_object_area: float, min_objects_per_image: int, max_objects_per_image: int,
               stats: dict | None = None) -> "AnnotatedObjects":
        """``rows``: the annotations a loader kept, in reading order; ``images[k]`` is the image
        of rows with ``image == k``, numbered in order of first appearance among the rows."""
        order = np.argsort(rows["image"], kind="stable")   # grouped by image, reading order within one
        rows = rows[order]
        rows = rows[rows["area"] > min_object_area]
        counts = np.bincount(rows["image"], minlength=len(images))
        wanted = (counts >= min_objects_per_image) & (counts <= max_objects_per_image)
        rows = rows[wanted[rows["image"]]]
        kept = np.flatnonzero(wanted)
        starts = np.concatenate(([0], np.cumsum(counts[kept])))
        stats = {**(stats or {}), "images_with_objects": len(images), "images": len(kept),
                 "annotations": len(rows)}
        return cls([images[k] for k in kept], rows, starts, categories, files, make_annotation, stats)

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, n: int) -> list[Annotation]:
        info = self.images[n]
        return [self.make_annotation(row, info) for row in self.rows[self.starts[n]:self.starts[n + 1]]]

    def image_path(self, n: int) -> Path:
        return self.files / self.images[n].file_name
