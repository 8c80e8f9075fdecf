"""Stage ``acquire``: put ILSVRC2012-style archives into ``data/raw/``.

Whatever the source, the result has the layout of the official ImageNet files,
so ``extract`` always runs the same (real) path:

    data/raw/ILSVRC2012_img_train.tar   a tar of per-synset tars (<synset>.tar of <name>.JPEG)
    data/raw/ILSVRC2012_img_val.tar     flat <name>.JPEG files
    data/raw/validation_synset.txt      "<val file name> <synset>" per line
    data/raw/synsets.json               {synset: {"index": int, "human": str}}

``data.source`` picks where they come from:

- ``demo`` (default): generated offline by ``tasks/data/scenes.py``; also writes the
  exact ground truth beside them, ``groundtruth/depth/<stem>.png`` (float32
  inverse depth, RGBA-packed, tasks/data/formats.py) and
  ``groundtruth/segmentation/<stem>.png`` (uint8 labels, see tasks/data/scenes.py).
- ``imagenet``: the official files you already have, local paths or ``s3://``
  URIs, checked against the official sizes *before* any copy (nothing is ever
  downloaded from the internet). Local files are hard-linked when possible.
- file-based sources, read in the layout their downloads have (tasks/data/faces.py,
  coco.py, ade20k.py, sources.py) and packed unchanged, one class per dataset:
  ``custom`` (the original's "train on your own images": two text files listing image
  paths, relative to the list's folder; every image must lie under ``data.custom.root``,
  default the list's folder, unless ``allow_outside``: tasks/data/image_lists.py), ``ffhq``, ``celebahq`` (its .npy arrays as
  lossless PNGs), ``faceshq`` (CelebA-HQ class 0 + FFHQ class 1), ``coco_stuff`` (COCO 2017,
  with the COCO-Stuff stuff+thing maps), ``ade20k`` and ``folder`` (any folder of photos,
  split at random: S-FLCKR). ``sources.json`` maps each packed name to its file. Sources
  that ship label maps also get ``segmentation_{train,validation}.tar`` (``<stem>.png``,
  the bytes as shipped) and ``maps.json`` (their label convention), which the
  ``source-maps`` stage turns into data/dataset/segmentation.
- ``coco``, ``open_images``: a scene dataset in the original's layout (a local folder),
  loaded and filtered as the original loads it; its images are packed in pseudo-synsets,
  their boxes written to ``objects/`` (tasks/data/objects/source.py) and ``sources.json``
  maps each packed name to its file, as for the sources above.

Packing streams: one image in memory at a time (per worker), whatever the class's size.
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tasks.config.schema import OBJECT_SOURCES, DataConfig, DemoConfig, ImagenetConfig
from tasks.data import scenes
from tasks.data.archives import write_nested_tar, write_tar
from tasks.data.files import atomic_path, write_json, write_text
from tasks.data.formats import save_depth_png, save_label_png
from tasks.data.image_lists import read_image_list
from tasks.data.label_maps import PROVIDED_MAPS
from tasks.data.layout import DATA, MAPS_JSON, SOURCES_JSON, SYNSETS_JSON, TRAIN_TAR, VAL_SYNSETS, VAL_TAR, maps_tar
from tasks.data.sources import SourceImage, read_source_file
from tasks.runtime.errors import StageError
from tasks.runtime.parallel import ordered_map
from tasks.runtime.progress import progress

# Sizes of the official files, as the original taming/data/imagenet.py checks them.
OFFICIAL_SIZES = {TRAIN_TAR: 147_897_477_120, VAL_TAR: 6_744_924_160, VAL_SYNSETS: 1_950_000}


class AcquireError(StageError):
    """A source file is missing, has the wrong size, or a list names a missing image."""


# ----------------------------------------------------------------------------- demo

def _jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _demo_image(job: tuple[DemoConfig, int, int, int, str, Path]) -> bytes:
    """Render one image, save its ground-truth maps, return its JPEG bytes (runs in a worker)."""
    cfg, split, kind, index, name, out = job
    scene = scenes.scene_for(cfg.seed, split, kind, index, cfg.classes, cfg.distractors)
    r = scenes.render(scene, cfg.resolution)
    stem = name.rsplit(".", 1)[0]
    save_depth_png(out / "groundtruth" / "depth" / f"{stem}.png", r.inverse_depth)
    save_label_png(out / "groundtruth" / "segmentation" / f"{stem}.png", r.segmentation)
    return _jpeg(r.image, cfg.jpeg_quality)


def acquire_demo(cfg: DemoConfig, out: Path, workers: int = 1) -> dict:
    kinds = scenes.KINDS[:cfg.classes]
    train = [(cfg, 0, k, i, f"{kind.synset}_{i + 1}.JPEG", out) for k, kind in enumerate(kinds)
             for i in range(cfg.n_train)]
    # Validation: classes interleaved in a seeded order under ImageNet's flat names.
    pairs = [(k, i) for k in range(cfg.classes) for i in range(cfg.n_val)]
    order = np.random.default_rng([cfg.seed, 1]).permutation(len(pairs))
    val = [(cfg, 1, *pairs[j], f"ILSVRC2012_val_{n + 1:08d}.JPEG", out) for n, j in enumerate(order)]
    jobs = train + val
    with ordered_map(workers) as map_:
        images = zip((job[4] for job in jobs), progress(map_(_demo_image, jobs), total=len(jobs), desc="demo scenes",
                                                    unit="img"))
        by_synset = itertools.groupby(itertools.islice(images, len(train)), key=lambda m: m[0].split("_")[0])
        write_nested_tar(out / TRAIN_TAR, ((f"{synset}.tar", members) for synset, members in by_synset))
        write_tar(out / VAL_TAR, images)
    write_text(out / VAL_SYNSETS, "".join(f"{job[4]} {kinds[job[2]].synset}\n" for job in val))
    synsets = {kind.synset: {"index": k, "human": kind.name} for k, kind in enumerate(kinds)}
    write_json(out / SYNSETS_JSON, synsets)
    return {"source": "demo", "train": len(train), "validation": len(val), "classes": cfg.classes}


# ----------------------------------------------------------------------------- imagenet

def _source_size(uri: str) -> int:
    from models import s3

    if s3.is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = s3.split_uri(uri)
        try:
            return int(s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as e:
            raise AcquireError(f"{uri}: cannot read it from S3 ({e})") from e
    if not Path(uri).is_file():
        raise AcquireError(f"{uri}: file not found")
    return Path(uri).stat().st_size


def _fetch(uri: str, dest: Path, size: int) -> None:
    """Place ``uri`` at ``dest``: hard link or copy (local), download (S3); skipped if already there."""
    from models import s3

    if dest.is_file() and dest.stat().st_size == size:
        print(f"{dest}: present, {size} bytes")
        return
    with atomic_path(dest) as tmp, progress(total=size, desc=dest.name, unit="B", unit_scale=True) as bar:
        if s3.is_s3(uri):
            bucket, key = s3.split_uri(uri)
            s3.client().download_file(bucket, key, str(tmp), Callback=bar.update)
        else:
            tmp.unlink()
            try:
                os.link(uri, tmp)      # same filesystem: no copy of 150 GB
                bar.update(size)
            except OSError:
                with open(uri, "rb") as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
                        bar.update(len(chunk))
    if dest.stat().st_size != size:
        raise AcquireError(f"{uri}: copied {dest.stat().st_size} bytes, expected {size}")


def _read_pairs(path: Path, what: str) -> dict[str, str]:
    pairs = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise AcquireError(f"{path}:{n}: expected '{what}', got {line!r}")
            pairs[parts[0]] = parts[1].strip()
    return pairs


def acquire_imagenet(cfg: ImagenetConfig, out: Path) -> dict:
    sources = {TRAIN_TAR: cfg.train_tar, VAL_TAR: cfg.val_tar, VAL_SYNSETS: cfg.validation_synsets}
    sizes = {name: _source_size(uri) for name, uri in sources.items()}   # all checked before any copy
    if cfg.check_sizes:
        for name, size in sizes.items():
            if size != OFFICIAL_SIZES[name]:
                raise AcquireError(
                    f"{sources[name]}: {size} bytes, but the official {name} has {OFFICIAL_SIZES[name]}; "
                    "a partial download or a different file? Set data.imagenet.check_sizes=false "
                    "to use a subset or a repacked archive on purpose.")
    for name, uri in sources.items():
        _fetch(uri, out / name, sizes[name])
    synsets = sorted(set(_read_pairs(out / VAL_SYNSETS, "<file> <synset>").values()))
    human = {}
    if cfg.synset_human:
        local = out / "synset_human.txt"
        _fetch(cfg.synset_human, local, _source_size(cfg.synset_human))
        human = _read_pairs(local, "<synset> <human label>")
    # Index = position in sorted synset order: the standard ImageNet class index.
    write_json(out / SYNSETS_JSON, {s: {"index": i, "human": human.get(s, s)} for i, s in enumerate(synsets)})
    return {"source": "imagenet", "classes": len(synsets), **{f"{k} bytes": v for k, v in sizes.items()}}


# ----------------------------------------------------------------------------- file-based sources

PACK_CHUNK = 256   # images read (converted) ahead of the tar writer: memory stays bounded


def _image_bytes(item: SourceImage) -> bytes:
    """The bytes packed for an image: the file as it is; a CelebA-HQ array as a lossless PNG."""
    if item.path.suffix == ".npy":
        from tasks.data.faces import npy_png_bytes
        return npy_png_bytes(item.path)
    return read_source_file(item.path)


def _packed(items: list[SourceImage], workers: int, desc: str):
    """(member name, bytes) of ``items`` in order, read by ``workers`` processes a chunk at a time."""
    with ordered_map(workers) as map_, progress(total=len(items), desc=desc, unit="img") as bar:
        for start in range(0, len(items), PACK_CHUNK):
            chunk = items[start:start + PACK_CHUNK]
            for item, data in zip(chunk, map_(_image_bytes, chunk)):
                bar.update(1)
                yield item.name, data


def pack_images(out: Path, splits: dict[str, list[SourceImage]], classes: list[tuple[str, str]],
                workers: int = 1, source: str = "custom") -> dict:
    """Pack a source's images as ILSVRC2012-style archives: ``classes`` [(synset, human name)] in
    class-label order; images keep their bytes under their member names. Label maps the
    images carry go to ``<kind>_<split>.tar`` as ``<stem>.png``, with maps.json."""
    train, val = splits["train"], splits["validation"]
    for split, items in splits.items():
        name, count = Counter(item.name for item in items).most_common(1)[0] if items else ("", 0)
        if count > 1:
            raise AcquireError(f"{source} {split}: {count} images would all be named {name}")
    synsets = [synset for synset, _ in classes]
    groups = [(f"{synset}.tar", _packed([i for i in train if i.synset == synset], workers, f"pack train {synset}"))
              for synset in synsets]
    write_nested_tar(out / TRAIN_TAR, groups)
    write_tar(out / VAL_TAR, _packed(val, workers, "pack validation"))
    write_text(out / VAL_SYNSETS, "".join(f"{item.name} {item.synset}\n" for item in val))
    write_json(out / SYNSETS_JSON, {synset: {"index": i, "human": human} for i, (synset, human) in enumerate(classes)})
    write_json(out / SOURCES_JSON, {item.name: str(item.path) for item in train + val})
    maps = PROVIDED_MAPS.get(source, {})
    for kind in maps:
        for split, items in splits.items():   # the maps as shipped; stage source-maps checks and converts them
            write_tar(out / maps_tar(kind, split), ((f"{i.stem}.png", read_source_file(i.labels))
                                                    for i in progress(items, desc=f"pack {kind} {split}", unit="map")))
    write_json(out / MAPS_JSON, {kind: asdict(m) for kind, m in maps.items()})
    return {"source": source, "train": len(train), "validation": len(val), "classes": len(classes)}


def source_images(cfg: DataConfig) -> tuple[dict[str, list[SourceImage]], list[tuple[str, str]]]:
    """The images of a file-based source per split, and its classes [(synset, human name)]."""
    from tasks.data import ade20k, coco, faces
    from tasks.data.sources import folder_images

    splits = ("train", "validation")
    if cfg.source == "custom":
        c = cfg.custom
        lists = {split: read_image_list(listing, c.root or None, c.allow_outside)
                 for split, listing in (("train", c.train_list), ("validation", c.test_list))}
        prefix = {"train": "custom", "validation": "custom_test"}
        return {split: [SourceImage("custom", f"{prefix[split]}_{n + 1:08d}.JPEG", path)
                        for n, path in enumerate(paths)] for split, paths in lists.items()}, [("custom", "custom")]
    if cfg.source in ("ffhq", "celebahq", "faceshq"):
        # FacesHQ: CelebA-HQ first (class 0), then FFHQ (class 1), as the original's FacesHQTrain
        parts = {"celebahq": (faces.celebahq_images, cfg.celebahq, "CelebA-HQ"), "ffhq": (faces.ffhq_images, cfg.ffhq, "FFHQ")}
        names = ["celebahq", "ffhq"] if cfg.source == "faceshq" else [cfg.source]
        images = {split: [item for name in names
                          for item in parts[name][0](parts[name][1].root, split, parts[name][1].complete)]
                  for split in splits}
        return images, [(name, parts[name][2]) for name in names]
    if cfg.source == "coco_stuff":
        c = cfg.coco_stuff
        return {split: coco.coco_stuff_images(c.root, c.stuffthing_root, split, c.complete)
                for split in splits}, [("coco", "COCO 2017")]
    if cfg.source == "ade20k":
        return {split: ade20k.ade20k_images(cfg.ade20k.root, split, cfg.ade20k.complete)
                for split in splits}, [("ade20k", "ADE20k")]
    f = cfg.folder
    return folder_images(Path(f.root), "photos", f.validation_fraction, f.seed), [("photos", "photos")]


# ----------------------------------------------------------------------------- stage

def run(cfg: DataConfig, out_dir: str | Path = DATA.raw, workers: int = 1) -> dict:
    """Acquire ``cfg.source`` into ``out_dir``; ``workers`` processes render the demo or read (convert) a
    source's images (the same bytes for any number)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.source == "demo":
        if (out / "groundtruth").exists():
            shutil.rmtree(out / "groundtruth")       # no stale maps from a previous setting
        summary = acquire_demo(cfg.demo, out, workers)
    elif cfg.source == "imagenet":
        summary = acquire_imagenet(cfg.imagenet, out)
    elif cfg.source in OBJECT_SOURCES:
        from tasks.data.objects.source import acquire_objects
        summary = acquire_objects(cfg, out)
    else:
        images, classes = source_images(cfg)    # the whole layout is checked before anything is written
        summary = pack_images(out, images, classes, workers, cfg.source)
    print("acquire: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(DATA.raw), help="output folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering the demo or reading a source's images (default: all cores); "
                             "the output does not depend on it")


def main(config, args: argparse.Namespace) -> None:
    run(config.data, args.out, args.workers)
