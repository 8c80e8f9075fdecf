"""The Parquet token store between `tokenize` and `train-transformer`.

A split is ``<split>/part-NNNNN.parquet`` files plus ``<split>/manifest.json``.
One row per (image, augmentation): ``id`` (the image's relpath), ``class_label``,
``aug`` (0 = the plain centre crop, 1 = its mirror image, 2.. = extra crops),
``image_tokens`` and ``cond_tokens`` as fixed-size lists of uint16.

Each part's file metadata says what made it. Key ``taming.tokens`` (``TokenMeta``,
the same in every part of both splits): the VQGAN checkpoints' SHA-256, token grids
and vocabulary sizes, the kind of conditioning, the crop size and the tokenize
settings that decide the rows (``RowSettings``), so the transformer can refuse
tokens made by other weights. Key ``taming.part`` (``PartInfo``): which images of
which split the part holds, with which augmentations, and a signature of those
images' files, so a rerun of tokenize re-makes exactly the parts that changed.

The manifest is written after all parts of a split exist: every part's name, row
count and SHA-256. ``TokenDataset`` verifies the split against it before training
(missing, extra, changed or truncated parts, row counts, token ranges), so damaged
tokens stop with an error naming the file instead of training on garbage.

Training reads a whole split into one contiguous uint16 array per column and
draws random batches by index: a batch costs one fancy-indexing gather.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data.files import atomic_path, is_temp, sha256_file, write_json
from tasks.runtime.errors import StageError

META_KEY = b"taming.tokens"
PART_KEY = b"taming.part"
FORMAT_VERSION = 2        # 2: row settings and part info in the metadata, manifest.json
PART_GLOB = "part-*.parquet"
MANIFEST = "manifest.json"
COLUMNS = ["id", "class_label", "aug", "image_tokens", "cond_tokens"]
COND_KINDS = ("depth", "segmentation", "class", "coord", "none", "objects_bbox", "objects_center_points")


class TokenStoreError(StageError, ValueError):
    """A token split is incomplete, damaged or from another version; the message names the file."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclasses.dataclass(frozen=True)
class Codes:
    """Where one token column comes from."""
    kind: str                 # image | depth | segmentation (a VQGAN) | class | coord | none | objects_bbox | ...
    vocab_size: int           # codebook size, number of classes, coordinate levels, 1 (the SOS token), a builder's no_tokens
    grid: tuple[int, int]     # token grid (h, w); (1, 1) for class and none; (1, length) for a builder
    sha256: str | None = None  # SHA-256 of the VQGAN checkpoint (None without a VQGAN)
    folder: str | None = None  # the VQGAN folder, e.g. data/vqgan/depth (objects: data/dataset/objects)
    # scenes: what the tokens mean (tasks.data.objects.conditioning.SceneConditioning.to_json())
    builder: dict | None = dataclasses.field(default=None, hash=False)

    @property
    def length(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclasses.dataclass(frozen=True)
class RowSettings:
    """The tokenize settings that decide which rows each part holds."""
    hflip: bool               # train rows include each crop's mirror image
    extra_crops: int          # train rows include this many seeded random crops
    seed: int                 # of the random crops
    rows_per_part: int        # images per part (with all their augmentations)
    rescale: int | None = None  # train crops are cut from images scaled to this shorter side (None: the crop size)
    random_crop: str | None = None   # scenes: the extra crops' method (tokenize.objects.random_crop)


@dataclasses.dataclass(frozen=True)
class TokenMeta:
    image: Codes
    cond: Codes
    size: int                 # crop side in pixels the tokens were made at
    rows: RowSettings
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TokenMeta":
        d = json.loads(text)
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"token format version {d.get('version')!r}, expected {FORMAT_VERSION} "
                             "(written by another version of `taming tokenize`)")
        codes = {k: Codes(**{**d[k], "grid": tuple(d[k]["grid"])}) for k in ("image", "cond")}
        return cls(image=codes["image"], cond=codes["cond"], size=d["size"], rows=RowSettings(**d["rows"]))


@dataclasses.dataclass(frozen=True)
class PartInfo:
    """What one part holds: images [first, stop) of the split's file list, each with ``augmentations``."""
    split: str
    index: int
    first: int
    stop: int
    augmentations: tuple[int, ...]
    inputs: str               # tasks.data.files.files_signature of the part's images (and maps)

    @property
    def rows(self) -> int:
        return (self.stop - self.first) * len(self.augmentations)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "PartInfo":
        d = json.loads(text)
        return cls(**{**d, "augmentations": tuple(d["augmentations"])})


def schema(meta: TokenMeta, info: PartInfo) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("class_label", pa.int32()),
        ("aug", pa.uint8()),
        ("image_tokens", pa.list_(pa.uint16(), meta.image.length)),
        ("cond_tokens", pa.list_(pa.uint16(), meta.cond.length)),
    ], metadata={META_KEY: meta.to_json().encode(), PART_KEY: info.to_json().encode()})


def _token_column(tokens: np.ndarray, length: int, vocab_size: int, name: str) -> pa.FixedSizeListArray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] != length:
        raise ValueError(f"{name}: expected shape (rows, {length}), got {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}), got [{tokens.min()}, {tokens.max()}]")
    flat = pa.array(np.ascontiguousarray(tokens, dtype=np.uint16).reshape(-1), type=pa.uint16())
    return pa.FixedSizeListArray.from_arrays(flat, length)


def write_part(path: str | Path, meta: TokenMeta, info: PartInfo, ids: Sequence[str], class_labels, augs,
               image_tokens: np.ndarray, cond_tokens: np.ndarray) -> None:
    """Write one part atomically: it exists under its final name only when complete."""
    n = len(ids)
    if not (len(class_labels) == len(augs) == len(image_tokens) == len(cond_tokens) == n):
        raise ValueError(f"{path}: columns have different lengths")
    if n != info.rows:
        raise ValueError(f"{path}: {n} rows, but {info.stop - info.first} images x {len(info.augmentations)} "
                         f"augmentations make {info.rows}")
    table = pa.Table.from_arrays([
        pa.array(list(ids), type=pa.string()),
        pa.array(np.asarray(class_labels, dtype=np.int32)),
        pa.array(np.asarray(augs, dtype=np.uint8)),
        _token_column(image_tokens, meta.image.length, meta.image.vocab_size, "image_tokens"),
        _token_column(cond_tokens, meta.cond.length, meta.cond.vocab_size, "cond_tokens"),
    ], schema=schema(meta, info))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _decode_metadata(path: Path, raw: dict) -> tuple[TokenMeta, PartInfo]:
    for key in (META_KEY, PART_KEY):
        if key not in raw:
            raise TokenStoreError(f"{path}: no {key.decode()} metadata; not written by this version of "
                                  "`taming tokenize`")
    try:
        return TokenMeta.from_json(raw[META_KEY]), PartInfo.from_json(raw[PART_KEY])
    except (ValueError, KeyError, TypeError) as e:
        raise TokenStoreError(f"{path}: bad metadata: {e}") from e


def read_metadata(path: str | Path) -> tuple[TokenMeta, PartInfo]:
    """A part's ``TokenMeta`` and ``PartInfo`` (its footer only)."""
    path = Path(path)
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise TokenStoreError(f"{path}: not a readable Parquet file: {e}") from e
    return _decode_metadata(path, raw)


def read_meta(path: str | Path) -> TokenMeta:
    return read_metadata(path)[0]


def is_current(path: Path, meta: TokenMeta, info: PartInfo) -> bool:
    """Whether ``path`` is a complete part made with exactly this metadata (else tokenize re-makes it)."""
    try:
        return path.is_file() and read_metadata(path) == (meta, info)
    except TokenStoreError:
        return False


def list_parts(split_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(split_dir).glob(PART_GLOB) if not is_temp(p))


def write_manifest(split_dir: str | Path, parts: list[Path]) -> dict:
    """Record each part's name, rows and SHA-256 in ``<split_dir>/manifest.json`` (atomically),
    once the parts are complete; ``TokenDataset`` verifies the split against it."""
    entries, meta = [], None
    for path in parts:
        part_meta, info = read_metadata(path)
        if meta is not None and part_meta != meta:
            raise TokenStoreError(f"{path}: metadata differs from {parts[0]} (mixed tokenize runs)")
        meta = part_meta
        entries.append({"name": path.name, "rows": info.rows, "sha256": sha256_file(path)})
    manifest = {"version": FORMAT_VERSION, "meta": json.loads(meta.to_json()) if meta else None,
                "rows": sum(e["rows"] for e in entries), "parts": entries}
    write_json(Path(split_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(split_dir: str | Path) -> dict:
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        if list_parts(split_dir):
            raise TokenStoreError(f"{path}: missing: the split is incomplete (an unfinished or sharded "
                                  "`taming tokenize`) or from an older version; rerun `taming tokenize`")
        raise FileNotFoundError(f"{split_dir}: no {PART_GLOB} files; run `taming tokenize` first")
    try:
        manifest = json.loads(path.read_text())
        version, parts = manifest["version"], manifest["parts"]
    except (ValueError, KeyError, TypeError) as e:
        raise TokenStoreError(f"{path}: not a token manifest: {e}") from e
    if version != FORMAT_VERSION:
        raise TokenStoreError(f"{path}: token format version {version!r}, expected {FORMAT_VERSION}; "
                              "rerun `taming tokenize`")
    if not parts:
        raise TokenStoreError(f"{path}: lists no parts")
    return manifest


def _fixed_list_to_numpy(column: pa.ChunkedArray, length: int) -> np.ndarray:
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]) if column.num_chunks else pa.array([], pa.uint16())
    return flat.to_numpy(zero_copy_only=False).reshape(-1, length)


class TokenDataset:
    """A whole split of tokens in memory: contiguous uint16 arrays, batches by index.

    The split is verified against its manifest first: every listed part present with its
    SHA-256 and row count, no unlisted part, one metadata, every token within its
    vocabulary. ``dataset[indices]`` (and ``__getitems__``, which torch's DataLoader calls
    with a whole batch of indices) returns int64 tensors ready for the transformer.
    """

    def __init__(self, split_dir: str | Path):
        self.split_dir = Path(split_dir)
        manifest = read_manifest(self.split_dir)
        listed = [self.split_dir / entry["name"] for entry in manifest["parts"]]
        if extra := sorted(set(list_parts(self.split_dir)) - set(listed)):
            raise TokenStoreError(f"{extra[0]}: not listed in {self.split_dir / MANIFEST}; a leftover of another "
                                  "tokenize run? rerun `taming tokenize`")
        self.meta: TokenMeta | None = None
        tables = [self._read_part(path, entry) for entry, path in zip(manifest["parts"], listed)]
        self.manifest_sha256 = hashlib.sha256((self.split_dir / MANIFEST).read_bytes()).hexdigest()
        table = pa.concat_tables(tables)
        self.ids: list[str] = table.column("id").to_pylist()
        self.class_label = table.column("class_label").to_numpy().astype(np.int64)
        self.aug = table.column("aug").to_numpy()
        self.image_tokens = _fixed_list_to_numpy(table.column("image_tokens"), self.meta.image.length)
        self.cond_tokens = _fixed_list_to_numpy(table.column("cond_tokens"), self.meta.cond.length)
        for name, codes in (("image_tokens", self.meta.image), ("cond_tokens", self.meta.cond)):
            tokens = getattr(self, name)
            if tokens.size and tokens.max() >= codes.vocab_size:
                row = int(np.argmax(tokens.max(axis=1)))
                raise TokenStoreError(f"{self.split_dir}: {name} of row {row} ({self.ids[row]}) has token "
                                      f"{int(tokens[row].max())}, outside the vocabulary [0, {codes.vocab_size})")

    def _read_part(self, path: Path, entry: dict) -> pa.Table:
        """One part, checked against its manifest entry (and the parts before it)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TokenStoreError(f"{path}: listed in {self.split_dir / MANIFEST} but missing; "
                                  "rerun `taming tokenize`") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise TokenStoreError(f"{path}: contents changed since tokenize wrote it (SHA-256 differs from "
                                  f"{self.split_dir / MANIFEST}); rerun `taming tokenize`")
        try:
            table = pq.read_table(pa.BufferReader(data), columns=COLUMNS)
        except (OSError, pa.ArrowException) as e:
            raise TokenStoreError(f"{path}: not a readable Parquet file: {e}") from e
        meta, info = _decode_metadata(path, table.schema.metadata or {})
        if self.meta is not None and meta != self.meta:
            raise TokenStoreError(f"{path}: metadata differs from the other parts (mixed tokenize runs); "
                                  "rerun `taming tokenize`")
        self.meta = meta
        if not table.num_rows == info.rows == entry["rows"]:
            raise TokenStoreError(f"{path}: {table.num_rows} rows, but its metadata says {info.rows} and "
                                  f"{self.split_dir / MANIFEST} {entry['rows']}; rerun `taming tokenize`")
        return table

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
