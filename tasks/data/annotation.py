"""Per-image maps, batched, sharded and resumable: what the depth and segment stages share.

For each split, the sorted ``filelist.txt`` is sharded round-robin
(``items[shard::num_shards]``, so workers or GPUs split a split without talking to
each other) and cut into chunks of ``batch_size``. A chunk whose outputs all exist is
skipped; any other chunk is loaded (in DataLoader workers), grouped by what can share
one forward pass (an ``Annotator``'s ``key``: equal network input sizes), run, and the
missing outputs written atomically. Because chunks depend only on the file list, a
rerun after an interruption computes every image in exactly the batch it would have
had, so the result is identical to an uninterrupted run.

Concurrency: a run holds one lock per (split, shard, number of shards)
(``data/.depth.train.shard-0-of-4.lock``, tasks/runtime/locks.py), so the same
shard started twice is refused naming the first, while different shards run side
by side. Runs whose shards overlap (another ``--num-shards``) are safe too: every
output file is written atomically and is a function of its image alone, so
whichever run writes it leaves a complete, correct file.

The ``groundtruth`` model reads the demo generator's exact maps
(``data/raw/groundtruth/{depth,segmentation}/<stem>.png``) through the same machinery.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from tasks.config.schema import AnnotateConfig
from tasks.data.formats import load_depth_png, load_label_png, save_depth_png, save_label_png
from tasks.data.images import open_image, to_rgb
from tasks.data.layout import Layout
from tasks.runtime import locks
from tasks.runtime.progress import progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of both annotation stages."""
    parser.add_argument("--split", choices=["train", "validation"], help="only this split (default: params splits)")
    parser.add_argument("--shard", type=int, default=0, help="this worker's shard index (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards (default: %(default)s)")


def with_flags(cfg: AnnotateConfig, args: argparse.Namespace) -> AnnotateConfig:
    """The params section with the command's split and shard flags (validated again)."""
    return dataclasses.replace(cfg, shard=args.shard, num_shards=args.num_shards,
                               **({"splits": [args.split]} if args.split else {}))


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
    return Layout(Path(data_dir)).images / split / relpath


def output_path(data_dir: Path, kind: str, split: str, relpath: str) -> Path:
    return Layout(Path(data_dir)).map_file(kind, split, relpath)


def groundtruth_path(data_dir: Path, kind: str, relpath: str) -> Path:
    return Layout(Path(data_dir)).groundtruth(kind) / (Path(relpath).stem + ".png")


def _read_image(path: Path, read: Callable):
    """``read(image)`` of an image file opened by open_image (accepted formats and sizes; a
    missing, truncated or refused file raises ImageRefused naming it)."""
    with open_image(path) as im:
        return read(im)


def load_image(data_dir: Path, split: str, relpath: str):
    """uint8 RGB (3, H, W) tensor."""
    import torch

    rgb = _read_image(image_path(data_dir, split, relpath), to_rgb)
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
    path = Layout(Path(data_dir)).filelist(split)
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
    with contextlib.ExitStack() as held:   # refused before any work if a split's shard is taken
        for split in cfg.splits:
            held.enter_context(locks.hold(Layout(Path(cfg.data_dir)).maps(annotator.kind), split,
                                          f"shard-{cfg.shard}-of-{cfg.num_shards}"))
        return _annotate(cfg, annotator)


def _annotate(cfg: AnnotateConfig, annotator: Annotator) -> dict:
    from torch.utils.data import DataLoader

    counts = {}
    for split in cfg.splits:
        chunks = shard_chunks(read_filelist(cfg.data_dir, split), cfg.shard, cfg.num_shards, cfg.batch_size)
        out = functools.partial(output_path, cfg.data_dir, annotator.kind, split)
        todo = [c for c in chunks if not all(out(rel).exists() for rel in c)]
        total = sum(map(len, chunks))
        written = 0
        loader = DataLoader(_Chunks(todo, annotator.load, cfg.data_dir, split), batch_size=None,
                            num_workers=cfg.num_workers, collate_fn=_as_is)
        with progress(total=total, initial=total - sum(map(len, todo)), unit="img",
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
