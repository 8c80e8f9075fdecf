"""Stage ``acquire``: put ILSVRC2012-style archives into ``data/raw/``.

Whatever the source, the result has the layout of the official ImageNet files,
so ``extract`` always runs the same (real) path:

    data/raw/ILSVRC2012_img_train.tar   a tar of per-synset tars (<synset>.tar of <name>.JPEG)
    data/raw/ILSVRC2012_img_val.tar     flat <name>.JPEG files
    data/raw/validation_synset.txt      "<val file name> <synset>" per line
    data/raw/synsets.json               {synset: {"index": int, "human": str}}

``data.source`` picks where they come from:

- ``demo`` (default): generated offline by ``tasks/scenes.py``; also writes the
  exact ground truth beside them, ``groundtruth/depth/<stem>.png`` (float32
  inverse depth, RGBA-packed, tasks/formats.py) and
  ``groundtruth/segmentation/<stem>.png`` (uint8 labels, see tasks/scenes.py).
- ``imagenet``: the official files you already have, local paths or ``s3://``
  URIs, checked against the official sizes *before* any copy (nothing is ever
  downloaded from the internet). Local files are hard-linked when possible.
- ``custom``: the original project's "train on your own images" route: two text
  files listing image paths (train, test), one per line, relative paths taken
  from the list file's folder. The images are packed unchanged as one class
  ``custom``; ``custom_sources.json`` maps each packed name to its source path.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
from tqdm import tqdm

from tasks import scenes
from tasks.archives import tar_bytes, write_tar
from tasks.config import check, from_params
from tasks.formats import save_depth_png, save_label_png
from tasks.io import atomic_path, write_json, write_text

TRAIN_TAR, VAL_TAR, VAL_SYNSETS = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "validation_synset.txt"
# Sizes of the official files, as the original taming/data/imagenet.py checks them.
OFFICIAL_SIZES = {TRAIN_TAR: 147_897_477_120, VAL_TAR: 6_744_924_160, VAL_SYNSETS: 1_950_000}


class AcquireError(RuntimeError):
    """A source file is missing, has the wrong size, or a list names a missing image."""


@dataclass
class DemoConfig:
    seed: int = 0
    resolution: int = 64        # square images, pixels
    classes: int = 10           # object kinds used (the first N of tasks.scenes.KINDS)
    n_train: int = 100          # training images per class
    n_val: int = 20             # validation images per class
    distractors: int = 2        # smaller objects of other kinds behind the main one
    jpeg_quality: int = 92

    def __post_init__(self):
        check(8 <= self.resolution <= 1024, "data.demo.resolution", "must be in 8..1024")
        check(1 <= self.classes <= len(scenes.KINDS), "data.demo.classes", f"must be in 1..{len(scenes.KINDS)}")
        check(self.n_train >= 1 and self.n_val >= 1, "data.demo.n_train", "n_train and n_val must be >= 1")
        check(self.distractors >= 0, "data.demo.distractors", "must be >= 0")
        check(1 <= self.jpeg_quality <= 100, "data.demo.jpeg_quality", "must be in 1..100")


@dataclass
class ImagenetConfig:
    train_tar: str = ""             # local path or s3:// URI of ILSVRC2012_img_train.tar
    val_tar: str = ""               # ... of ILSVRC2012_img_val.tar
    validation_synsets: str = ""    # ... of validation_synset.txt ("<file> <synset>" lines)
    synset_human: str = ""          # optional "<synset> <human label>" lines (e.g. LOC_synset_mapping.txt)
    check_sizes: bool = True        # false only for subsets / repacked archives


@dataclass
class CustomConfig:
    train_list: str = ""   # text file: one image path per line
    test_list: str = ""


@dataclass
class DataConfig:
    source: Literal["demo", "imagenet", "custom"] = "demo"
    demo: DemoConfig = field(default_factory=DemoConfig)
    imagenet: ImagenetConfig = field(default_factory=ImagenetConfig)
    custom: CustomConfig = field(default_factory=CustomConfig)

    def __post_init__(self):
        if self.source == "imagenet":
            for key in ("train_tar", "val_tar", "validation_synsets"):
                check(bool(getattr(self.imagenet, key)), f"data.imagenet.{key}", "required when data.source is imagenet")
        if self.source == "custom":
            for key in ("train_list", "test_list"):
                check(bool(getattr(self.custom, key)), f"data.custom.{key}", "required when data.source is custom")


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


@contextlib.contextmanager
def ordered_map(workers: int) -> Iterator[Callable]:
    """An order-preserving ``map``: the builtin one, or over ``workers`` processes (the same results)."""
    if workers <= 1:
        yield map
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda fn, jobs: pool.map(fn, jobs, chunksize=16)


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
        images = zip((job[4] for job in jobs), tqdm(map_(_demo_image, jobs), total=len(jobs), desc="demo scenes",
                                                    unit="img"))
        by_synset = itertools.groupby(itertools.islice(images, len(train)), key=lambda m: m[0].split("_")[0])
        write_tar(out / TRAIN_TAR, ((f"{synset}.tar", tar_bytes(members)) for synset, members in by_synset))
        write_tar(out / VAL_TAR, images)
    write_text(out / VAL_SYNSETS, "".join(f"{job[4]} {kinds[job[2]].synset}\n" for job in val))
    synsets = {kind.synset: {"index": k, "human": kind.name} for k, kind in enumerate(kinds)}
    write_json(out / "synsets.json", synsets)
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
    with atomic_path(dest) as tmp, tqdm(total=size, desc=dest.name, unit="B", unit_scale=True) as bar:
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
    write_json(out / "synsets.json", {s: {"index": i, "human": human.get(s, s)} for i, s in enumerate(synsets)})
    return {"source": "imagenet", "classes": len(synsets), **{f"{k} bytes": v for k, v in sizes.items()}}


# ----------------------------------------------------------------------------- custom

def read_image_list(path: str | Path) -> list[Path]:
    """Image paths listed in a text file (one per line; relative to the list's folder); all must exist."""
    path = Path(path)
    if not path.is_file():
        raise AcquireError(f"{path}: image list not found")
    images = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            image = path.parent / line.strip()
            if not image.is_file():
                raise AcquireError(f"{path}:{n}: image {line.strip()!r} not found (looked at {image})")
            images.append(image)
    if not images:
        raise AcquireError(f"{path}: lists no images")
    return images


def acquire_custom(cfg: CustomConfig, out: Path) -> dict:
    train, test = read_image_list(cfg.train_list), read_image_list(cfg.test_list)
    train_names = [f"custom_{i + 1:08d}.JPEG" for i in range(len(train))]
    test_names = [f"custom_test_{i + 1:08d}.JPEG" for i in range(len(test))]
    # Bytes are packed unchanged (PNGs too): extract and the datasets decode by content.
    members = tqdm(zip(train_names, train), total=len(train), desc="pack train", unit="img")
    write_tar(out / TRAIN_TAR, [("custom.tar", tar_bytes((n, p.read_bytes()) for n, p in members))])
    members = tqdm(zip(test_names, test), total=len(test), desc="pack test", unit="img")
    write_tar(out / VAL_TAR, ((n, p.read_bytes()) for n, p in members))
    write_text(out / VAL_SYNSETS, "".join(f"{n} custom\n" for n in test_names))
    write_json(out / "synsets.json", {"custom": {"index": 0, "human": "custom"}})
    write_json(out / "custom_sources.json", {n: str(p) for n, p in zip(train_names + test_names, train + test)})
    return {"source": "custom", "train": len(train), "validation": len(test), "classes": 1}


# ----------------------------------------------------------------------------- stage

def run(cfg: DataConfig, out_dir: str | Path = "data/raw", workers: int = 1) -> dict:
    """Acquire ``cfg.source`` into ``out_dir``; ``workers`` processes render the demo (same bytes for any number)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.source == "demo":
        if (out / "groundtruth").exists():
            shutil.rmtree(out / "groundtruth")       # no stale maps from a previous setting
        summary = acquire_demo(cfg.demo, out, workers)
    elif cfg.source == "imagenet":
        summary = acquire_imagenet(cfg.imagenet, out)
    else:
        summary = acquire_custom(cfg.custom, out)
    print("acquire: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/raw", help="output folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes rendering the demo (default: all cores); the output does not depend on it")


def main(args: argparse.Namespace) -> int:
    cfg = from_params(DataConfig, args.params, "data", args.overrides)
    try:
        run(cfg, args.out, args.workers)
    except AcquireError as e:
        print(f"taming acquire: {e}", file=sys.stderr)
        return 1
    return 0

