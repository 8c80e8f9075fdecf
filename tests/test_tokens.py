"""The Parquet token store: schema, metadata, round trip, the manifest, damaged stores, batches."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.data.token_store import (
    MANIFEST,
    META_KEY,
    Codes,
    PartInfo,
    RowSettings,
    TokenDataset,
    TokenMeta,
    TokenStoreError,
    list_parts,
    part_name,
    read_metadata,
    token_loader,
    write_manifest,
    write_part,
)

META = TokenMeta(image=Codes("image", 300, (4, 4), "a" * 64, "data/vqgan/image"),
                 cond=Codes("depth", 40, (2, 2), "b" * 64, "data/vqgan/depth"), size=16,
                 rows=RowSettings(hflip=False, extra_crops=0, seed=0, rows_per_part=8))


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    return ([f"n0/{seed}_{i}.JPEG" for i in range(n)], rng.integers(0, 5, n), rng.integers(0, 3, n),
            rng.integers(0, 300, (n, 16)), rng.integers(0, 40, (n, 4)))


def _info(k, n, first=0):
    return PartInfo(split="train", index=k, first=first, stop=first + n, augmentations=(0,), inputs="c" * 64)


def _split(folder, sizes=(7, 5), meta=META):
    """Parts of ``sizes`` rows each and their manifest; returns the rows written."""
    parts, first = [], 0
    for k, n in enumerate(sizes):
        rows = _rows(n, k)
        write_part(folder / part_name(k), meta, _info(k, n, first), *rows)
        parts.append(rows)
        first += n
    write_manifest(folder, list_parts(folder))
    return parts


def test_round_trip_keeps_values_schema_and_metadata(tmp_path):
    parts = _split(tmp_path)
    schema = pq.read_schema(tmp_path / part_name(0))
    assert schema.field("image_tokens").type == pa.list_(pa.uint16(), 16)
    assert schema.field("cond_tokens").type == pa.list_(pa.uint16(), 4)
    assert read_metadata(tmp_path / part_name(1)) == (META, _info(1, 5, first=7))

    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["rows"] == 12 and [(e["name"], e["rows"]) for e in manifest["parts"]] == [
        (part_name(0), 7), (part_name(1), 5)]

    ds = TokenDataset(tmp_path)
    assert ds.meta == META and len(ds) == 12
    assert ds.image_tokens.dtype == np.uint16 and ds.image_tokens.flags.c_contiguous
    assert ds.ids == parts[0][0] + parts[1][0]
    np.testing.assert_array_equal(ds.image_tokens, np.concatenate([p[3] for p in parts]))
    np.testing.assert_array_equal(ds.cond_tokens, np.concatenate([p[4] for p in parts]))
    np.testing.assert_array_equal(ds.class_label, np.concatenate([p[1] for p in parts]))
    np.testing.assert_array_equal(ds.aug, np.concatenate([p[2] for p in parts]))

    batch = ds[[11, 0]]
    assert batch["image_tokens"].dtype == torch.int64
    assert batch["image_tokens"].tolist() == [parts[1][3][4].tolist(), parts[0][3][0].tolist()]


def test_loader_visits_every_row_once_per_epoch(tmp_path):
    _split(tmp_path, sizes=(10,))
    ds = TokenDataset(tmp_path)
    seen = []
    for batch in token_loader(ds, batch_size=4, shuffle=True, seed=3):
        assert batch["image_tokens"].shape[1:] == (16,) and batch["cond_tokens"].shape[1:] == (4,)
        seen += [tuple(r) for r in batch["image_tokens"].tolist()]
    assert sorted(seen) == sorted(tuple(r) for r in ds.image_tokens.astype(np.int64).tolist())


def test_out_of_range_tokens_and_ragged_columns_are_refused(tmp_path):
    ids, labels, augs, image, cond = _rows(3, 0)
    image[1, 2] = 300  # vocabulary is [0, 300)
    with pytest.raises(ValueError, match=r"image_tokens: token ids must lie in \[0, 300\)"):
        write_part(tmp_path / part_name(0), META, _info(0, 3), ids, labels, augs, image, cond)
    with pytest.raises(ValueError, match="cond_tokens: expected shape"):
        write_part(tmp_path / part_name(0), META, _info(0, 3), ids, labels, augs, image % 300, cond[:, :3])
    with pytest.raises(ValueError, match="3 rows, but 4 images x 1 augmentations make 4"):
        write_part(tmp_path / part_name(0), META, _info(0, 4), ids, labels, augs, image % 300, cond)
    assert list_parts(tmp_path) == []  # nothing half-written under a final name


def test_foreign_mixed_unfinished_or_old_stores_give_clear_errors(tmp_path):
    foreign = tmp_path / "foreign" / part_name(0)
    foreign.parent.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(TokenStoreError, match=f"{foreign}.*{META_KEY.decode()}"):
        write_manifest(foreign.parent, [foreign])

    mixed = tmp_path / "mixed"
    write_part(mixed / part_name(0), META, _info(0, 2), *_rows(2, 0))
    other = TokenMeta(image=META.image, cond=Codes("depth", 40, (2, 2), "c" * 64, "data/vqgan/depth"), size=16,
                      rows=META.rows)
    write_part(mixed / part_name(1), other, _info(1, 2, first=2), *_rows(2, 1))
    with pytest.raises(ValueError, match="metadata differs"):
        write_manifest(mixed, list_parts(mixed))

    unfinished = tmp_path / "unfinished"   # parts without a manifest: a sharded or killed tokenize
    write_part(unfinished / part_name(0), META, _info(0, 2), *_rows(2, 0))
    with pytest.raises(TokenStoreError, match=f"{unfinished / MANIFEST}: missing.*rerun `taming tokenize`"):
        TokenDataset(unfinished)

    old = tmp_path / "old"                 # version 1 stores had no manifest and fewer metadata
    _split(old)
    manifest = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(TokenStoreError, match="token format version 1, expected 2; rerun `taming tokenize`"):
        TokenDataset(old)

    with pytest.raises(FileNotFoundError, match="taming tokenize"):
        TokenDataset(tmp_path / "empty")


def _flip_one_token(path, row, column="image_tokens"):
    """Rewrite a part with one in-range token changed, keeping its metadata (what bit rot or a
    careless edit does); the result is a valid Parquet file."""
    table = pq.read_table(path)
    tokens = np.stack(table.column(column).to_pylist()).astype(np.uint16)
    tokens[row, 0] = (tokens[row, 0] + 1) % 40
    flat = pa.array(tokens.reshape(-1), type=pa.uint16())
    column_index = table.schema.get_field_index(column)
    table = table.set_column(column_index, table.schema.field(column),
                             pa.FixedSizeListArray.from_arrays(flat, tokens.shape[1]))
    pq.write_table(table, path)


@pytest.mark.parametrize("damage, message", [
    ("flip", "part-00001.parquet: contents changed since tokenize wrote it"),
    ("delete", "part-00001.parquet: listed in .*manifest.json but missing"),
    ("drop_rows", "part-00001.parquet: contents changed"),
    ("truncate", "part-00000.parquet: contents changed"),
    ("extra", "part-00002.parquet: not listed in"),
])
def test_damaged_parts_are_refused_naming_the_file(tmp_path, damage, message):
    _split(tmp_path)
    part = tmp_path / part_name(1)
    if damage == "flip":
        _flip_one_token(part, row=2)
    elif damage == "delete":
        part.unlink()
    elif damage == "drop_rows":
        table = pq.read_table(part)
        pq.write_table(table.slice(0, 3).replace_schema_metadata(table.schema.metadata), part)
    elif damage == "truncate":
        data = (tmp_path / part_name(0)).read_bytes()
        (tmp_path / part_name(0)).write_bytes(data[: len(data) // 2])
    elif damage == "extra":
        write_part(tmp_path / part_name(2), META, _info(2, 2, first=12), *_rows(2, 2))
    with pytest.raises(TokenStoreError, match=message):
        TokenDataset(tmp_path)


def test_out_of_range_tokens_with_a_consistent_manifest_are_refused_before_training(tmp_path):
    """A store whose parts and manifest agree but hold tokens outside the vocabulary (a
    writer bug, or a part made for a larger codebook) fails at load, naming the row."""
    _split(tmp_path)
    part = tmp_path / part_name(0)
    table = pq.read_table(part)
    tokens = np.stack(table.column("cond_tokens").to_pylist()).astype(np.uint16)
    tokens[3, 1] = 41                      # the depth vocabulary is [0, 40)
    flat = pa.array(tokens.reshape(-1), type=pa.uint16())
    table = table.set_column(4, table.schema.field("cond_tokens"), pa.FixedSizeListArray.from_arrays(flat, 4))
    pq.write_table(table, part)
    write_manifest(tmp_path, list_parts(tmp_path))
    with pytest.raises(TokenStoreError, match=r"cond_tokens of row 3 \(n0/0_3.JPEG\) has token 41, outside "
                                              r"the vocabulary \[0, 40\)"):
        TokenDataset(tmp_path)


def test_interrupted_write_leftovers_are_ignored(tmp_path):
    _split(tmp_path, sizes=(2,))
    (tmp_path / f".tmp-{part_name(1)}.abc").write_bytes(b"half a file")
    assert list_parts(tmp_path) == [tmp_path / part_name(0)]
    assert len(TokenDataset(tmp_path)) == 2
