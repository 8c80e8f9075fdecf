"""Open Images v6 boxes, as the original's AnnotatedObjectsOpenImages.

The layout under ``root`` (the original's ``data_path``):

    class-descriptions-boxable.csv         "<label id>,<name>" rows, no header
    oidv6-train-annotations-bbox.csv       train boxes  (header: ImageID,Source,LabelName,Confidence,
    validation-annotations-bbox.csv        validation    XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,
    test-annotations-bbox.csv              test          IsGroupOf,IsDepiction,IsInside[,...])
    train-images-boxable.csv, validation-images.csv, test-images.csv   (must exist; not read)
    train/, validation/, test/             <ImageID>.jpg (the id zero-padded to 16 characters)

What the original does, and this loader too: categories from the class descriptions,
narrowed by the allow list and the mapping (categories.py); a row's label is mapped
(``open_images_unify_categories_for_coco`` merges e.g. Woman, Man, Boy, Girl into Person);
its box is (XMin, YMin, XMax - XMin, YMax - YMin), its id is the row's index in the file;
it is kept if its area is >= ``min_object_area`` and its category known, and the image
order is the order of first kept rows. Then loaded.py filters again by area (> this time:
the original filters twice, so a box of exactly the minimum area counts for the order but
not as an object) and by object count. Flags are ``bool(int(value))``: the file's -1
("unknown", e.g. for Source activemil) becomes True, as in the original.

The CSV is read row by row; memory holds the kept rows (loaded.py). A row that is not the
format (missing column, a value that is no number, an ImageID that is not a plain name)
is refused with the file, the line and the problem.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from tasks.data.objects.annotations import Annotation, ImageInfo
from tasks.data.objects.categories import MAPPINGS, Category, CategoryTable, named
from tasks.data.objects.loaded import AnnotatedObjects, Rows

STRUCTURE = {
    "train": ("oidv6-train-annotations-bbox.csv", "train-images-boxable.csv", "train"),
    "validation": ("validation-annotations-bbox.csv", "validation-images.csv", "validation"),
    "test": ("test-annotations-bbox.csv", "test-images.csv", "test"),
}
CLASS_DESCRIPTIONS = "class-descriptions-boxable.csv"
COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
           "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
FLAG_COLUMNS = ("IsGroupOf", "IsTruncated", "IsOccluded", "IsDepiction", "IsInside")   # loaded.ROW's order
_IMAGE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class OpenImagesFormatError(ValueError):
    """A file is not Open Images' format; the message names the file, the line and the problem."""


def paths(root: str | Path, split: str) -> tuple[Path, Path, Path]:
    """(class descriptions, box CSV, image folder) of a split; FileNotFoundError naming what is missing."""
    if split not in STRUCTURE:
        raise ValueError(f"Open Images split {split!r}: expected one of {', '.join(STRUCTURE)}")
    root = Path(root)
    boxes, file_list, files = STRUCTURE[split]
    for path in (root / CLASS_DESCRIPTIONS, root / boxes, root / file_list, root / files):
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: not found; an Open Images folder holds {CLASS_DESCRIPTIONS}, the split's box CSV "
                f"({boxes}), its image list ({file_list}) and its images ({files}/<ImageID>.jpg)")
    return root / CLASS_DESCRIPTIONS, root / boxes, root / files


def image_file(image_id: str) -> str:
    """The original's file name of an image: the id zero-padded to 16 characters, .jpg."""
    return f"{image_id:0>16}.jpg"


def read_class_descriptions(path: Path) -> dict[str, Category]:
    categories = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if len(row) < 2:
                raise OpenImagesFormatError(f"{path}:{line}: expected '<label id>,<name>', got {row!r}")
            categories[row[0]] = Category(row[0], None, row[1])
    return categories


def _flag(value: str, where: str) -> int:
    try:
        return int(bool(int(value)))   # the original's bool(int(...)): -1 ("unknown") is True
    except ValueError:
        raise OpenImagesFormatError(f"{where}: a flag must be an integer, got {value!r}") from None


def _make_annotation(categories: CategoryTable, sources: list[str]):
    """How a row becomes the original's Annotation for Open Images (flags as booleans)."""
    def make(row: np.void, info: ImageInfo) -> Annotation:
        no = int(row["category_no"])
        group_of, truncated, occluded, depiction, inside = (bool(f) for f in row["flags"])
        return Annotation(area=float(row["area"]), image_id=info.id, bbox=tuple(float(v) for v in row["bbox"]),
                          category_no=no, category_id=categories.categories[no].id, id=int(row["id"]),
                          source=sources[row["source"]], confidence=float(row["confidence"]),
                          is_group_of=group_of, is_truncated=truncated, is_occluded=occluded,
                          is_depiction=depiction, is_inside=inside)
    return make


def load_open_images(root: str | Path, split: str, min_object_area: float = 0.0001, min_objects_per_image: int = 2,
                     max_objects_per_image: int = 30,
                     category_allow_list: str | None = "top_300_classes_plus_coco_compatibility",
                     category_mapping: str | None = "open_images_unify_categories_for_coco") -> AnnotatedObjects:
    """One split, as AnnotatedObjectsOpenImages(data_path=root, split=split, ...) holds it."""
    descriptions, boxes, files = paths(root, split)
    categories = CategoryTable.build(read_class_descriptions(descriptions), category_allow_list, category_mapping)
    mapping = named(MAPPINGS, category_mapping, "category mapping") or {}
    images: dict[str, int] = {}
    sources: dict[str, int] = {}
    rows, read = Rows(), 0
    with open(boxes, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise OpenImagesFormatError(f"{boxes}: no column(s) {', '.join(missing)} in its header "
                                        f"{reader.fieldnames}; not an Open Images box CSV")
        for i, row in enumerate(reader):
            read, where = i + 1, f"{boxes}:{i + 2}"
            if None in row or any(row[c] is None for c in COLUMNS):
                raise OpenImagesFormatError(f"{where}: expected {len(reader.fieldnames)} values")
            try:
                x0, x1, y0, y1, confidence = (float(row[c]) for c in ("XMin", "XMax", "YMin", "YMax", "Confidence"))
            except ValueError as e:
                raise OpenImagesFormatError(f"{where}: {e}") from None
            if not np.isfinite([x0, x1, y0, y1, confidence]).all():
                raise OpenImagesFormatError(f"{where}: box coordinates and confidence must be finite")
            width, height = x1 - x0, y1 - y0
            area = width * height
            category_id = mapping.get(row["LabelName"], row["LabelName"])
            flags = tuple(_flag(row[c], where) for c in FLAG_COLUMNS)
            if not (area >= min_object_area):
                continue
            try:
                category_no = categories.number(category_id)
            except KeyError:
                continue
            image_id = row["ImageID"]
            if not _IMAGE_ID.fullmatch(image_id):
                raise OpenImagesFormatError(f"{where}: ImageID {image_id!r} is not a plain id (letters, digits, _ -)")
            image = images.setdefault(image_id, len(images))
            source = sources.setdefault(row["Source"], len(sources))
            rows.append(image, i, category_no, (x0, y0, width, height), area, confidence, source, flags)
    infos = [ImageInfo(image_id, image_file(image_id)) for image_id in images]
    return AnnotatedObjects.select(rows.array(), infos, categories, files, _make_annotation(categories, list(sources)),
                                   min_object_area, min_objects_per_image, max_objects_per_image, stats={"rows": read})
