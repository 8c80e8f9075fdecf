"""COCO 2017 with instance (things) and stuff annotations, as the original's AnnotatedObjectsCoco.

The layout under ``root`` (the original's ``data_path``):

    annotations/instances_{train,val}2017.json   images, things (80 categories), their boxes
    annotations/stuff_{train,val}2017.json       stuff (92 categories incl. "other"), their boxes
    train2017/*.jpg, val2017/*.jpg

What the original does, and this loader too: the categories are the instances' and the
stuff file's lists (as chosen by ``use_things``/``use_stuff``) without "other"
(categories.py numbers them); the images are the instances file's; the annotations are
read instances first, then stuff, in file order, skipping unknown categories; a box is
divided by its image's width and height (``area`` is that box's relative area, not the
segment's); ``is_group_of`` is the raw integer ``iscrowd``. Then loaded.py filters by area
and object count and orders the images.

The JSON files are streamed (json_stream.py): memory holds the kept annotations' rows and
the image list, never a file. Anything that is not the format (a missing file or field,
a box that is not 4 numbers, an annotation of an image the file does not list, a file
name with a path in it) is refused with the file, the annotation and the problem.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from tasks.data.archives import is_plain_name
from tasks.data.objects.annotations import Annotation, ImageInfo
from tasks.data.objects.categories import Category, CategoryTable
from tasks.data.objects.json_stream import JSONStreamError, stream_arrays
from tasks.data.objects.loaded import AnnotatedObjects, Rows

SPLITS = {"train": "train2017", "validation": "val2017"}
LAYOUT = ("annotations/instances_{files}.json", "annotations/stuff_{files}.json", "{files}")


class CocoFormatError(ValueError):
    """An annotation file is not COCO 2017's format; the message names the file and the item."""


def paths(root: str | Path, split: str) -> tuple[Path, Path, Path]:
    """(instances JSON, stuff JSON, image folder) of a split; FileNotFoundError naming what is missing."""
    if split not in SPLITS:
        raise ValueError(f"COCO split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(root)
    found = tuple(root / p.format(files=SPLITS[split]) for p in LAYOUT)
    for path in found:
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: not found; a COCO 2017 folder holds annotations/instances_{{train,val}}2017.json, "
                f"annotations/stuff_{{train,val}}2017.json, train2017/ and val2017/ (the original's data_path)")
    return found


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CocoFormatError(f"{what} must be an integer, got {value!r}")
    return value


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise CocoFormatError(f"{what} must be a finite number, got {value!r}")
    return value


def _image(item, where: str) -> tuple[int, ImageInfo]:
    if not isinstance(item, dict):
        raise CocoFormatError(f"{where}: an image must be an object, got {item!r:.80}")
    image_id = _int(item.get("id"), f"{where}: image id")
    where = f"{where}: image {image_id}"
    name = item.get("file_name")
    if not isinstance(name, str) or not is_plain_name(name):
        raise CocoFormatError(f"{where}: file_name must be a plain file name, got {name!r}")
    width, height = (_int(item.get(k), f"{where}: {k}") for k in ("width", "height"))
    if width < 1 or height < 1:
        raise CocoFormatError(f"{where}: width and height must be positive, got {width}x{height}")
    return image_id, ImageInfo(str(image_id), name, (width, height))


def _category(item, where: str) -> Category:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise CocoFormatError(f"{where}: a category must be an object with a name, got {item!r:.80}")
    return Category(str(_int(item.get("id"), f"{where}: category id")), item.get("supercategory"), item["name"])


def _annotation(item, where: str, rows: Rows) -> None:
    """One annotation as a raw row (image id, id, category id, iscrowd, absolute bbox), checked."""
    if not isinstance(item, dict):
        raise CocoFormatError(f"{where}: an annotation must be an object, got {item!r:.80}")
    ann_id = _int(item.get("id"), f"{where}: annotation id")
    where = f"{where}: annotation {ann_id}"
    bbox = item.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise CocoFormatError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
    iscrowd = _int(item.get("iscrowd"), f"{where}: iscrowd")
    if iscrowd not in (0, 1):
        raise CocoFormatError(f"{where}: iscrowd must be 0 or 1, got {iscrowd}")
    image_id, category_id = (_int(item.get(k), f"{where}: {k}") for k in ("image_id", "category_id"))
    if not (0 <= image_id < 2 ** 31 and 0 <= category_id < 2 ** 31):
        raise CocoFormatError(f"{where}: image_id and category_id must be in [0, 2^31)")
    rows.append(image_id, ann_id, category_id, [_number(v, f"{where}: bbox") for v in bbox], 0.0,
                flags=(iscrowd, -1, -1, -1, -1))


def load_coco(root: str | Path, split: str, min_object_area: float = 0.00001, min_objects_per_image: int = 2,
              max_objects_per_image: int = 30, use_things: bool = True, use_stuff: bool = True,
              category_allow_list: str | None = None, category_mapping: str | None = None) -> AnnotatedObjects:
    """One split, as AnnotatedObjectsCoco(data_path=root, split=split, ...) holds it."""
    instances_json, stuff_json, files = paths(root, split)
    images: dict[int, ImageInfo] = {}
    listed: list[Category] = []
    raw = Rows()                         # every annotation read, in the order read
    read_by: dict[Path, int] = {}        # rows read when each file was done

    def add_image(item, where):
        image_id, info = _image(item, where)
        if image_id in images:
            raise CocoFormatError(f"{where}: image {image_id} is listed twice")
        images[image_id] = info

    try:
        for path, wanted in ((instances_json, use_things), (stuff_json, use_stuff)):
            handlers = {}
            if path == instances_json:   # the images are always the instances file's, as in the original
                handlers["images"] = lambda item, w=str(path): add_image(item, w)
            if wanted:
                handlers["categories"] = lambda item, w=str(path): listed.append(_category(item, w))
                handlers["annotations"] = lambda item, w=str(path): _annotation(item, w, raw)
            keys = stream_arrays(path, handlers)
            missing = sorted(set(handlers) - keys)
            if missing:
                raise CocoFormatError(f"{path}: no {', '.join(missing)} (not a COCO annotation file)")
            read_by[path] = raw.count
    except JSONStreamError as e:
        raise CocoFormatError(str(e)) from None

    categories = CategoryTable.build({c.id: c for c in listed if c.name != "other"},
                                     category_allow_list, category_mapping)
    rows = raw.array()
    # every annotation's image must be listed (checked before the category, as the original)
    image_ids, per_row = np.unique(rows["image"], return_inverse=True)
    unlisted = np.array([i not in images for i in image_ids.tolist()], dtype=bool)
    if unlisted.any():
        k = int(np.flatnonzero(unlisted[per_row])[0])
        path = instances_json if k < read_by[instances_json] else stuff_json
        raise CocoFormatError(f"{path}: annotation {rows['id'][k]}: image_id [{rows['image'][k]}] has no image "
                              f"description in {instances_json}")
    size = np.array([images[i].size for i in image_ids.tolist()], dtype=np.float64).reshape(-1, 2)[per_row]
    category_ids, per_row = np.unique(rows["category_no"], return_inverse=True)
    numbers = np.array([_number_or_unknown(categories, c) for c in category_ids.tolist()], dtype=np.int64)
    rows["category_no"] = numbers[per_row]
    rows["bbox"] /= np.concatenate((size, size), axis=1)      # float64, as the original's Python division
    rows["area"] = rows["bbox"][:, 2] * rows["bbox"][:, 3]
    rows = rows[rows["category_no"] >= 0]
    # images numbered in order of their first kept annotation (the original's dict order)
    image_ids, first, per_row = np.unique(rows["image"], return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    rows["image"] = rank[per_row]
    by_order = [images[i] for i in image_ids[np.argsort(first, kind="stable")].tolist()]
    return AnnotatedObjects.select(rows, by_order, categories, files, _make_annotation(categories),
                                   min_object_area, min_objects_per_image, max_objects_per_image,
                                   stats={"listed_images": len(images)})


def _number_or_unknown(categories: CategoryTable, category_id: int) -> int:
    try:
        return categories.number(str(category_id))
    except KeyError:
        return -1


def _make_annotation(categories: CategoryTable):
    """How a row becomes the original's Annotation for COCO (image_id an int, iscrowd as is)."""
    def make(row: np.void, info: ImageInfo) -> Annotation:
        no = int(row["category_no"])
        return Annotation(area=float(row["area"]), image_id=int(info.id), bbox=tuple(float(v) for v in row["bbox"]),
                          category_no=no, category_id=categories.categories[no].id, id=int(row["id"]),
                          is_group_of=int(row["flags"][0]))
    return make
