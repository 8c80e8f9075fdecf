"""``acquire`` for a scene dataset (data.source coco or open_images): the dataset's images as
ILSVRC2012-style archives, so ``extract`` runs its usual (safe) path, plus their boxes.

The split is loaded as the original loads it (coco.py, open_images.py: its filters decide
which images belong to the dataset), and its images are packed in dataset order, unchanged,
as ``<stem>.JPEG`` in pseudo-synsets of SHARD images (``coco-0000``, ``coco-0001``, ...; extract
holds one synset in memory at a time). Beside the archives, in ``data/raw/objects/``:

    train.jsonl, validation.jsonl   one record per packed image, in dataset order, with its
                                    "relpath" <synset>/<stem>.JPEG (records.py)
    categories.json                 the category table, the source and its settings
    missing.json                    images the annotations name but the folder lacks (skipped)

and ``sources.json``: each packed name -> the file it came from (as for every file-based source).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from tasks.config.schema import DataConfig
from tasks.data.archives import name_problem, tar_bytes, write_tar
from tasks.data.files import atomic_path, write_json, write_text
from tasks.data.image_lists import image_file_problem
from tasks.data.layout import SOURCES_JSON, SYNSETS_JSON, TRAIN_TAR, VAL_SYNSETS, VAL_TAR
from tasks.data.objects.loaded import AnnotatedObjects
from tasks.data.objects.records import CATEGORIES_FILE, to_record
from tasks.runtime.errors import StageError
from tasks.runtime.progress import progress

SHARD = 500
NAMES = {"coco": "COCO 2017", "open_images": "Open Images v6"}


def load_split(cfg: DataConfig, split: str) -> AnnotatedObjects:
    """A split of data.source as the original's dataset class loads it."""
    from tasks.data.objects.coco import CocoFormatError, load_coco
    from tasks.data.objects.open_images import OpenImagesFormatError, load_open_images

    o = cfg.objects
    common = dict(min_object_area=o.min_object_area, min_objects_per_image=o.min_objects_per_image,
                  max_objects_per_image=o.max_objects_per_image)
    try:
        if cfg.source == "coco":
            return load_coco(o.root, split, use_things=o.use_things, use_stuff=o.use_stuff, **common)
        return load_open_images(o.root, split, category_allow_list=o.category_allow_list,
                                category_mapping=o.category_mapping, **common)
    except (CocoFormatError, OpenImagesFormatError) as e:
        raise StageError(str(e)) from None


def _packed(data: AnnotatedObjects, source: str, missing: list[str]):
    """(synset, member name, image index) of every image that exists, in dataset order; an image
    that is no regular file, too large, or whose member name extract would refuse stops acquire."""
    k, names = 0, set()
    for n in range(len(data)):
        path = data.image_path(n)
        try:
            problem = image_file_problem(path.stat())
        except FileNotFoundError:
            missing.append(data.images[n].file_name)
            continue
        if problem:
            raise StageError(f"{path}: {problem}")
        name = Path(data.images[n].file_name).stem + ".JPEG"
        if problem := name_problem(name):
            raise StageError(f"{path}: cannot be packed as {name!r}: {problem}")
        if name in names:
            raise StageError(f"{data.files}: two images of the split would both be packed as {name}")
        names.add(name)
        yield f"{source}-{k // SHARD:04d}", name, n
        k += 1


def acquire_objects(cfg: DataConfig, out: Path) -> dict:
    source, objects = cfg.source, out / "objects"
    summary, tables, missing, synsets, files = {"source": source}, {}, {}, set(), {}
    for split in ("train", "validation"):
        data = load_split(cfg, split)
        tables[split] = data.categories
        missing[split] = []
        members = list(_packed(data, source, missing[split]))
        if not members:
            raise StageError(f"{cfg.objects.root}: no {split} image passes data.{source}'s filters and exists "
                             f"({len(data)} pass, {len(missing[split])} of them missing)")
        synsets.update(s for s, _, _ in members)
        files.update((name, str(data.image_path(n))) for _, name, n in members)
        with atomic_path(objects / f"{split}.jsonl") as tmp, open(tmp, "w") as f:
            for synset, name, n in members:
                record = to_record(data.images[n], data.annotations(n), data.categories)
                f.write(json.dumps({"relpath": f"{synset}/{name}", **record}) + "\n")

        def read(job):
            return job[1], data.image_path(job[2]).read_bytes()
        jobs = progress(members, desc=f"pack {split}", unit="img")
        if split == "train":   # a tar of per-synset tars; members come synset by synset
            shards = itertools.groupby(jobs, key=lambda job: job[0])
            write_tar(out / TRAIN_TAR, ((f"{s}.tar", tar_bytes(map(read, js))) for s, js in shards))
        else:
            write_tar(out / VAL_TAR, map(read, jobs))
            write_text(out / VAL_SYNSETS, "".join(f"{name} {synset}\n" for synset, name, _ in members))
        summary[split] = len(members)
        summary[f"{split}_annotations"] = data.stats["annotations"]
        summary[f"{split}_missing_images"] = len(missing[split])
    if tables["train"] != tables["validation"]:
        raise StageError(f"{cfg.objects.root}: the train and validation splits list different categories")
    write_json(out / SYNSETS_JSON, {s: {"index": i, "human": f"{NAMES[source]} images, shard {i}"}
                                    for i, s in enumerate(sorted(synsets))})
    settings = {"source": source, **dataclasses.asdict(cfg.objects)}
    write_json(objects / CATEGORIES_FILE, {"settings": settings, "categories": tables["train"].to_json()})
    write_json(objects / "missing.json", missing)
    write_json(out / SOURCES_JSON, files)
    summary["categories"] = len(tables["train"])
    return summary
