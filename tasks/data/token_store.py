"""The Parquet token store between `tokenize` and `train-transformer`.

One row per (image, augmentation): ``id`` (the image's relpath), ``class_label``,
``aug`` (0 = the plain centre crop, 1 = its mirror image, 2.. = extra crops),
``image_tokens`` and ``cond_tokens`` as fixed-size lists of uint16. The file
metadata (key ``taming.tokens``, JSON) says where the tokens came from: the
VQGAN checkpoints' SHA-256, token grids and vocabulary sizes, and the kind of
conditioning, so the transformer can refuse tokens made by other weights.

Training reads a whole split into one contiguous uint16 array per column and
draws random batches by index: a batch costs one fancy-indexing gather.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data.files import atomic_path, is_temp

META_KEY = b"taming.tokens"
FORMAT_VERSION = 1
PART_GLOB = "part-*.parquet"
COND_KINDS = ("depth", "segmentation", "class", "coord", "none")


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclasses.dataclass(frozen=True)
class Codes:
    """Where one token column comes from."""
    kind: str                 # image | depth | segmentation (a VQGAN) | class | coord | none
    vocab_size: int           # codebook size, number of classes, coordinate levels, or 1 (the SOS token)
    grid: tuple[int, int]     # token grid (h, w); (1, 1) for class and none
    sha256: str | None = None  # SHA-256 of the VQGAN checkpoint (None without a VQGAN)
    folder: str | None = None  # the VQGAN folder, e.g. data/vqgan/depth

    @property
    def length(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclasses.dataclass(frozen=True)
class TokenMeta:
    image: Codes
    cond: Codes
    size: int                 # crop side in pixels the tokens were made at
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TokenMeta":
        d = json.loads(text)
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"token format version {d.get('version')!r}, expected {FORMAT_VERSION}")
        codes = {k: Codes(**{**d[k], "grid": tuple(d[k]["grid"])}) for k in ("image", "cond")}
        return cls(image=codes["image"], cond=codes["cond"], size=d["size"])


def schema(meta: TokenMeta) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("class_label", pa.int32()),
        ("aug", pa.uint8()),
        ("image_tokens", pa.list_(pa.uint16(), meta.image.length)),
        ("cond_tokens", pa.list_(pa.uint16(), meta.cond.length)),
    ], metadata={META_KEY: meta.to_json().encode()})


def _token_column(tokens: np.ndarray, length: int, vocab_size: int, name: str) -> pa.FixedSizeListArray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != length:
        raise ValueError(f"{name}: expected shape (rows, {length}), got {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
    flat = pa.array(np.ascontiguousarray(tokens, dtype=np.uint16).reshape(-1), type=pa.uint16())
    return pa.FixedSizeListArray.from_arrays(flat, length)


def write_part(path: str | Path, meta: TokenMeta, ids: Sequence[str], class_labels, augs,
               image_tokens: np.ndarray, cond_tokens: np.ndarray) -> None:
    """Write one part atomically: it exists under its final name only when complete."""
    n = len(ids)
    if not (len(class_labels) == len(augs) == len(image_tokens) == len(cond_tokens) == n):
        raise ValueError(f"{path}: columns have different lengths")
    table = pa.Table.from_arrays([
        pa.array(list(ids), type=pa.string()),
        pa.array(np.asarray(class_labels, dtype=np.int32)),
        pa.array(np.asarray(augs, dtype=np.uint8)),
        _token_column(image_tokens, meta.image.length, meta.image.vocab_size, "image_tokens"),
        _token_column(cond_tokens, meta.cond.length, meta.cond.vocab_size, "cond_tokens"),
    ], schema=schema(meta))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_meta(path: str | Path) -> TokenMeta:
    path = Path(path)
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from e
    if META_KEY not in raw:
        raise ValueError(f"{path}: no {META_KEY.decode()} metadata; not written by `taming tokenize`")
    try:
        return TokenMeta.from_json(raw[META_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: bad {META_KEY.decode()} metadata: {e}") from e


def list_parts(split_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(split_dir).glob(PART_GLOB) if not is_temp(p))


def _fixed_list_to_numpy(column: pa.ChunkedArray, length: int) -> np.ndarray:
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]) if column.num_chunks else pa.array([], pa.uint16())
    return flat.to_numpy(zero_copy_only=False).reshape(-1, length)


class TokenDataset:
    """A whole split of tokens in memory: contiguous uint16 arrays, batches by index.

    ``dataset[indices]`` (and ``__getitems__``, which torch's DataLoader calls with
    a whole batch of indices) returns int64 tensors ready for the transformer.
    """

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        parts = list_parts(self.split_dir)
        if not parts:
            raise FileNotFoundError(f"{self.split_dir}: no {PART_GLOB} files; run `taming tokenize` first")
        self.meta = read_meta(parts[0])
        for p in parts[1:]:
            if read_meta(p) != self.meta:
                raise ValueError(f"{p}: metadata differs from {parts[0]} (mixed tokenize runs); rerun `taming tokenize`")
        tables = [pq.read_table(p, columns=["id", "class_label", "aug", "image_tokens", "cond_tokens"]) for p in parts]
        table = pa.concat_tables(tables)
        self.ids: list[str] = table.column("id").to_pylist()
        self.class_label = table.column("class_label").to_numpy().astype(np.int64)
        self.aug = table.column("aug").to_numpy()
        self.image_tokens = _fixed_list_to_numpy(table.column("image_tokens"), self.meta.image.length)
        self.cond_tokens = _fixed_list_to_numpy(table.column("cond_tokens"), self.meta.cond.length)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, indices) -> dict:
        import torch
        idx = np.asarray(indices, dtype=np.int64)
        return {
            "image_tokens": torch.from_numpy(self.image_tokens[idx].astype(np.int64)),
            "cond_tokens": torch.from_numpy(self.cond_tokens[idx].astype(np.int64)),
            "class_label": torch.from_numpy(self.class_label[idx]),
        }

    __getitem__ = __getitems__


def _batched(batch: dict) -> dict:
    """collate_fn for TokenDataset: ``__getitems__`` already returns a batch."""
    return batch


def token_loader(dataset: TokenDataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
    """A DataLoader of random (or sequential) batches; Lightning shards it under DDP."""
    import torch
    from torch.utils.data import DataLoader
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      collate_fn=_batched, generator=generator, num_workers=0)
