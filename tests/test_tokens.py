"""The Parquet token store: schema, metadata, round trip, errors, batches."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.data.token_store import (
    META_KEY,
    Codes,
    TokenDataset,
    TokenMeta,
    list_parts,
    part_name,
    read_meta,
    token_loader,
    write_part,
)

META = TokenMeta(image=Codes("image", 300, (4, 4), "a" * 64, "data/vqgan/image"),
                 cond=Codes("depth", 40, (2, 2), "b" * 64, "data/vqgan/depth"), size=16)


def _rows(n, seed):
    rng = np.random.default_rng(seed)
    return ([f"n0/{seed}_{i}.JPEG" for i in range(n)], rng.integers(0, 5, n), rng.integers(0, 3, n),
            rng.integers(0, 300, (n, 16)), rng.integers(0, 40, (n, 4)))


def test_round_trip_keeps_values_schema_and_metadata(tmp_path):
    parts = [_rows(7, 0), _rows(5, 1)]
    for k, rows in enumerate(parts):
        write_part(tmp_path / part_name(k), META, *rows)

    schema = pq.read_schema(tmp_path / part_name(0))
    assert schema.field("image_tokens").type == pa.list_(pa.uint16(), 16)
    assert schema.field("cond_tokens").type == pa.list_(pa.uint16(), 4)
    assert read_meta(tmp_path / part_name(1)) == META

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
    write_part(tmp_path / part_name(0), META, *_rows(10, 0))
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
        write_part(tmp_path / part_name(0), META, ids, labels, augs, image, cond)
    with pytest.raises(ValueError, match="cond_tokens: expected shape"):
        write_part(tmp_path / part_name(0), META, ids, labels, augs, image % 300, cond[:, :3])
    assert list_parts(tmp_path) == []  # nothing half-written under a final name


def test_foreign_or_mixed_files_give_clear_errors(tmp_path):
    foreign = tmp_path / "foreign" / part_name(0)
    foreign.parent.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(ValueError, match=f"{foreign}.*{META_KEY.decode()}"):
        TokenDataset(foreign.parent)

    mixed = tmp_path / "mixed"
    write_part(mixed / part_name(0), META, *_rows(2, 0))
    other = TokenMeta(image=META.image, cond=Codes("depth", 40, (2, 2), "c" * 64, "data/vqgan/depth"), size=16)
    write_part(mixed / part_name(1), other, *_rows(2, 1))
    with pytest.raises(ValueError, match="metadata differs"):
        TokenDataset(mixed)

    with pytest.raises(FileNotFoundError, match="taming tokenize"):
        TokenDataset(tmp_path / "empty")


def test_interrupted_write_leftovers_are_ignored(tmp_path):
    write_part(tmp_path / part_name(0), META, *_rows(2, 0))
    (tmp_path / f".tmp-{part_name(1)}.abc").write_bytes(b"half a file")
    assert list_parts(tmp_path) == [tmp_path / part_name(0)]
    assert len(TokenDataset(tmp_path)) == 2
