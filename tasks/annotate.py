"""Batched, sharded, resumable per-image annotation: what the depth and segment stages share.

For each split, the sorted ``data/imagenet/<split>/filelist.txt`` is sharded round-robin
(``items[shard::num_shards]``, so workers or GPUs split a split without talking to each
other) and cut into chunks of ``batch_size``. A chunk whose outputs all exist is
skipped; any other chunk is loaded (in DataLoader workers), grouped by what can share
one forward pass (an ``Annotator``'s ``key``: equal network input sizes), run, and the
missing outputs written atomically. Because chunks depend only on the file list, a
rerun after an interruption computes every image in exactly the batch it would have
had, so the result is identical to an uninterrupted run.

The ``groundtruth`` model reads the demo generator's exact maps
(``data/raw/groundtruth/{depth,segmentation}/<stem>.png``) through the same machinery.
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from tasks.config import check
from tasks.formats import load_depth_png, load_label_png, save_depth_png, save_label_png

@dataclass
class AnnotateConfig:
    model: str
    weights: Path | None = None  # explicit weights file; default: the resolver (cache, S3 mirror, URL)
    batch_size: int = 8
    device: str = "auto"         # auto: CUDA when present, else CPU
    num_workers: int = 2         # image decoding processes
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    data_dir: Path = Path("data")
    shard: int = 0               # CLI only (--shard / --num-shards): sharding never changes an output
    num_shards: int = 1

    def __post_init__(self):
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
              f"{self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        check(len(self.splits) > 0 and set(self.splits) <= {"train", "validation"}, "splits",
              f"{self.splits}: choose from train, validation")
        check(self.num_shards >= 1 and 0 <= self.shard < self.num_shards, "shard",
              f"{self.shard} of {self.num_shards}: need 0 <= shard < num_shards")
        check(self.weights is None or self.model != "groundtruth", "weights", "the groundtruth model takes no weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=["train", "validation"], help="only this split (default: params splits)")
    parser.add_argument("--shard", type=int, default=0, help="this worker's shard index (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards (default: %(default)s)")


def main(cls: type, section: str, make_annotator: Callable, args: argparse.Namespace) -> int:
    """A stage's CLI: build its config, run, and report missing weights or inputs in one line."""
    from models.weights import WeightsNotFound

    cfg = config_from_args(cls, section, args)
    try:
        annotate(cfg, make_annotator(cfg))
    except (WeightsNotFound, FileNotFoundError) as e:
        print(f"taming {section}: {e}", file=sys.stderr)
        return 1
    return 0


def config_from_args(cls: type, section: str, args: argparse.Namespace):
    """The stage's params section plus the CLI's split/shard flags, validated."""
    from tasks.config import build, load_params

    data = dict(load_params(args.params, args.overrides).get(section) or {})
    data.update(shard=args.shard, num_shards=args.num_shards)
    if args.split:
        data["splits"] = [args.split]
    return build(cls, data, section)


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


@dataclass
class Annotator:
    """What a model contributes: how to load one item's input, which inputs may share a
    forward pass, the batched prediction, and how to store one output."""
    load: Callable[[Path, str, str], object]   # (data_dir, split, relpath) -> input; picklable for workers
    key: Callable[[object], Hashable]
    predict: Callable[[list], list[np.ndarray]]
    kind: str                                  # "depth" or "segmentation"

    def save(self, path: Path, output: np.ndarray) -> None:
        (save_depth_png if self.kind == "depth" else save_label_png)(path, output)


# ----------------------------------------------------------------------------- inputs

def image_path(data_dir: Path, split: str, relpath: str) -> Path:
    return Path(data_dir) / "imagenet" / split / relpath


def output_path(data_dir: Path, kind: str, split: str, relpath: str) -> Path:
    return (Path(data_dir) / kind / split / relpath).with_suffix(".png")


def groundtruth_path(data_dir: Path, kind: str, relpath: str) -> Path:
    return Path(data_dir) / "raw" / "groundtruth" / kind / (Path(relpath).stem + ".png")


def _read_image(path: Path, read: Callable):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return read(im)
    except (OSError, ValueError, Image.UnidentifiedImageError) as e:  # missing, truncated, not an image
        raise ValueError(f"{path}: cannot read image: {e}") from e


def load_image(data_dir: Path, split: str, relpath: str):
    """uint8 RGB (3, H, W) tensor."""
    import torch

    rgb = _read_image(image_path(data_dir, split, relpath), lambda im: np.asarray(im.convert("RGB")))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def load_groundtruth(kind: str, data_dir: Path, split: str, relpath: str) -> np.ndarray:
    """The demo generator's exact map for an image, checked against the image's size."""
    path = groundtruth_path(data_dir, kind, relpath)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ground-truth {kind} for {relpath}; the 'groundtruth' model "
                                f"exists only for the demo dataset -- choose a network model for real images")
    gt = (load_depth_png if kind == "depth" else load_label_png)(path)
    width, height = _read_image(image_path(data_dir, split, relpath), lambda im: im.size)  # header only
    if gt.shape != (height, width):
        raise ValueError(f"{path}: ground truth is {gt.shape[1]}x{gt.shape[0]}, image {relpath} is {width}x{height}")
    return gt


def groundtruth_annotator(kind: str) -> Annotator:
    return Annotator(load=functools.partial(load_groundtruth, kind), key=lambda x: None,
                     predict=lambda xs: xs, kind=kind)


# ----------------------------------------------------------------------------- the loop

def read_filelist(data_dir: Path, split: str) -> list[str]:
    path = Path(data_dir) / "imagenet" / split / "filelist.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the extract stage first")
    return sorted(line.strip() for line in path.read_text().splitlines() if line.strip())


def shard_chunks(items: list[str], shard: int, num_shards: int, batch_size: int) -> list[list[str]]:
    mine = items[shard::num_shards]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


class _Chunks:
    """Dataset of chunks: worker processes decode a whole chunk's inputs."""

    def __init__(self, chunks: list[list[str]], load: Callable, data_dir: Path, split: str):
        self.chunks, self.load, self.data_dir, self.split = chunks, load, data_dir, split

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return [(rel, self.load(self.data_dir, self.split, rel)) for rel in self.chunks[i]]


def _as_is(x):
    return x


def annotate(cfg: AnnotateConfig, annotator: Annotator) -> dict:
    """Run ``annotator`` over the configured splits and shard; returns per-split counts."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    counts = {}
    for split in cfg.splits:
        chunks = shard_chunks(read_filelist(cfg.data_dir, split), cfg.shard, cfg.num_shards, cfg.batch_size)
        out = functools.partial(output_path, cfg.data_dir, annotator.kind, split)
        todo = [c for c in chunks if not all(out(rel).exists() for rel in c)]
        total = sum(map(len, chunks))
        written = 0
        loader = DataLoader(_Chunks(todo, annotator.load, cfg.data_dir, split), batch_size=None,
                            num_workers=cfg.num_workers, collate_fn=_as_is)
        with tqdm(total=total, initial=total - sum(map(len, todo)), unit="img",
                  desc=f"{annotator.kind} {split} [{cfg.shard}/{cfg.num_shards}]") as bar:
            for chunk in loader:
                groups: dict[Hashable, list] = {}
                for rel, x in chunk:
                    groups.setdefault(annotator.key(x), []).append((rel, x))
                for group in groups.values():
                    outputs = annotator.predict([x for _, x in group])
                    for (rel, _), y in zip(group, outputs):
                        if not out(rel).exists():  # a chunk half-written before an interruption
                            annotator.save(out(rel), y)
                            written += 1
                bar.update(len(chunk))
        counts[split] = {"images": total, "written": written, "already_done": total - written}
        print(f"{annotator.kind} {split} shard {cfg.shard}/{cfg.num_shards}: {total} images, "
              f"{written} written, {total - written} already done")
    return counts
