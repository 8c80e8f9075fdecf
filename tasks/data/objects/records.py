"""Scenes on disk: one JSON record per image, and layouts (boxes + labels) a user writes.

A record is what the pipeline keeps of an annotated image (acquire writes them per split,
annotate@objects one file per extracted image):

    {"image_id": "17379", "file_name": "000000017379.jpg", "size": [478, 640],
     "objects": [{"label": "tv", "category_id": "72", "bbox": [x0, y0, w, h], "area": ...,
                  "id": 30246, "is_group_of": 0, ...every field of the original's Annotation}]}

Floats are written with Python's shortest round-trip repr, so they read back bit for bit.
A layout file (``taming sample-model --boxes``) is YAML or JSON: one layout or a list of
them, each ``{name: ..., objects: [{label: dog, bbox: [x0, y0, w, h]}, ...]}`` with boxes
relative to the picture, a label by name or category id, and optionally the flags
``is_group_of``, ``is_occluded``, ``is_depiction``, ``is_inside`` (true to set them). A record
is a layout too, so dataset boxes are sampled the same way.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from tasks.data.archives import is_plain_name
from tasks.data.objects.annotations import FLAGS, Annotation, ImageInfo
from tasks.data.objects.categories import CategoryTable

MAX_LAYOUT_BYTES = 16 << 20
CATEGORIES_FILE = "categories.json"


class LayoutError(ValueError):
    """A layout or record is not the format; the message names the file and the object."""


def to_record(info: ImageInfo, annotations: list[Annotation], categories: CategoryTable) -> dict:
    objects = [{**{k: v for k, v in a._asdict().items() if k != "image_id"}, "bbox": list(a.bbox),
                "label": categories.name(a.category_no)} for a in annotations]
    return {"image_id": info.id, "file_name": info.file_name, "size": list(info.size) if info.size else None,
            "objects": objects}


def record_annotations(record: dict, image_id: object = None) -> list[Annotation]:
    """A record's objects as the Annotations the dataset loaded (category numbers as stored)."""
    fields = set(Annotation._fields) - {"image_id"}
    return [Annotation(image_id=image_id, **{k: (tuple(v) if k == "bbox" else v) for k, v in o.items() if k in fields})
            for o in record["objects"]]


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if path.stat().st_size > MAX_LAYOUT_BYTES:
        raise LayoutError(f"{path}: larger than {MAX_LAYOUT_BYTES} bytes; not a layout or record")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise LayoutError(f"{path}: not JSON: {e}") from None


def _box(value, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise LayoutError(f"{where}: bbox must be 4 numbers [x0, y0, width, height] relative to the picture, "
                          f"got {value!r}")
    x0, y0, w, h = (float(v) for v in value)
    if not (0 <= x0 <= 1 and 0 <= y0 <= 1 and w >= 0 and h >= 0):
        raise LayoutError(f"{where}: bbox {list(value)}: x0 and y0 must lie in [0, 1], width and height be >= 0")
    return x0, y0, w, h


def layout_annotations(objects, categories: CategoryTable, where: str) -> list[Annotation]:
    """A layout's objects -> Annotations numbered by ``categories`` (a model's table)."""
    if not isinstance(objects, list):
        raise LayoutError(f"{where}: 'objects' must be a list of {{label, bbox}}")
    found = []
    for k, o in enumerate(objects):
        at = f"{where}: object {k}"
        if not isinstance(o, dict) or "bbox" not in o or not ({"label", "category_id"} & set(o)):
            raise LayoutError(f"{at}: expected {{label or category_id, bbox}}, got {o!r:.100}")
        label = o["category_id"] if o.get("category_id") is not None else o.get("label")
        try:
            no = categories.lookup(label)
        except KeyError as e:
            raise LayoutError(f"{at}: {e.args[0]} of this model ({len(categories)} categories, e.g. "
                              f"{', '.join(repr(c.name) for c in categories.categories[:5])})") from None
        bbox = _box(o["bbox"], at)
        found.append(Annotation(area=bbox[2] * bbox[3], image_id=None, bbox=bbox, category_no=no,
                                category_id=categories.categories[no].id, **{f: o.get(f) for f in FLAGS}))
    return found


def read_layouts(path: str | Path, categories: CategoryTable) -> list[tuple[str, list[Annotation]]]:
    """(name, annotations) of every layout in a YAML/JSON file (a record counts as one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > MAX_LAYOUT_BYTES:
        raise LayoutError(f"{path}: larger than {MAX_LAYOUT_BYTES} bytes; not a layout file")
    return parse_layouts(path.read_bytes(), categories, str(path), path.stem)


def parse_layouts(text: str | bytes, categories: CategoryTable, where: str = "layout",
                  stem: str = "layout") -> list[tuple[str, list[Annotation]]]:
    """(name, annotations) of the layouts in YAML/JSON text (unnamed ones: ``stem``, ``stem-k``)."""
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LayoutError(f"{where}: not YAML or JSON: {e}") from None
    layouts = doc if isinstance(doc, list) else [doc]
    found = []
    for k, layout in enumerate(layouts):
        at = where + (f" layout {k}" if isinstance(doc, list) else "")
        if not isinstance(layout, dict) or "objects" not in layout:
            raise LayoutError(f"{at}: expected {{name, objects: [{{label, bbox}}, ...]}} or a list of them")
        name = str(layout.get("name") or (stem if len(layouts) == 1 else f"{stem}-{k}"))
        if not is_plain_name(name):
            raise LayoutError(f"{at}: name {name!r} names an output folder: letters, digits, _ . + - only")
        found.append((name, layout_annotations(layout["objects"], categories, at)))
    return found


def place_records(raw_objects: Path, images_root: Path, out_root: Path, splits) -> dict:
    """annotate@objects: the record of every extracted image, as
    ``<out_root>/<split>/<synset>/<stem>.json``, and the category file. Records of images that
    extract refused are counted, not written; an extracted image without a record is an error."""
    from tasks.data.files import write_json
    from tasks.runtime.errors import StageError
    from tasks.runtime.progress import progress

    source = raw_objects / CATEGORIES_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{source}: not found; annotate.objects reads the boxes acquire writes for "
                                f"data.source coco or open_images")
    write_json(out_root / CATEGORIES_FILE, read_json(source))
    counts = {}
    for split in splits:
        extracted = set((images_root / split / "filelist.txt").read_text().split())
        records, written, n = raw_objects / f"{split}.jsonl", 0, 0
        with open(records) as f:
            for n, line in enumerate(progress(f, desc=f"objects {split}", unit="img"), 1):
                record = json.loads(line)
                relpath = record.pop("relpath", "")
                parts = relpath.split("/")
                if len(parts) != 2 or not all(is_plain_name(p) for p in parts):
                    raise StageError(f"{records}:{n}: relpath {relpath!r} is not <synset>/<name>")
                if relpath in extracted:
                    write_json((out_root / split / relpath).with_suffix(".json"), record)
                    extracted.discard(relpath)
                    written += 1
        if extracted:
            raise StageError(f"{images_root / split}: {len(extracted)} extracted image(s) have no record in {records}, "
                             f"e.g. {sorted(extracted)[0]}; rerun `taming acquire`")
        counts[split] = {"records": n, "written": written, "not_extracted": n - written}
        print(f"annotate objects {split}: {n} records = {written} written + {n - written} of images extract refused")
    return counts
