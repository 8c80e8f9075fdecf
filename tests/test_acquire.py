"""`acquire`: the demo archives, ImageNet files (local and S3) with size checks, custom image lists."""
import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import pytest
from params_files import write_params
from PIL import Image

from tasks import acquire, cli, extract
from tasks.acquire import OFFICIAL_SIZES, AcquireError
from tasks.config.schema import CustomConfig, DataConfig, DemoConfig, ExtractConfig, ImagenetConfig
from tasks.config.typed import ConfigError, build
from tasks.data import scenes
from tasks.data.datasets import FileListDataset
from tasks.data.formats import load_depth_png, load_label_png
from tasks.data.layout import TRAIN_TAR, VAL_SYNSETS, VAL_TAR
from tasks.runtime.errors import StageError

TINY = DemoConfig(seed=3, resolution=16, classes=3, n_train=4, n_val=2, distractors=1)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_writes_ilsvrc_style_archives_with_matching_ground_truth(tmp_path):
    raw = tmp_path / "raw"
    summary = acquire.run(DataConfig(demo=TINY), raw)
    assert summary == {"source": "demo", "train": 12, "validation": 6, "classes": 3}
    synsets = json.loads((raw / "synsets.json").read_text())
    assert synsets == {k.synset: {"index": i, "human": k.name} for i, k in enumerate(scenes.KINDS[:3])}

    with tarfile.open(raw / TRAIN_TAR) as outer:
        assert outer.getnames() == [f"{s}.tar" for s in synsets]
        inner = tarfile.open(fileobj=outer.extractfile(f"{scenes.KINDS[1].synset}.tar"))
        names = inner.getnames()
        assert names == [f"{scenes.KINDS[1].synset}_{i}.JPEG" for i in range(1, 5)]
        jpeg = inner.extractfile(names[2]).read()
    # The JPEG is the rendered scene (kind 1, index 2), and its ground truth sits beside it.
    truth = scenes.render(scenes.scene_for(3, 0, 1, 2, 3, 1), 16)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(float)
    assert np.abs(decoded - truth.image).mean() < 6
    stem = names[2][:-5]
    assert np.array_equal(load_depth_png(raw / "groundtruth/depth" / f"{stem}.png"), truth.inverse_depth)
    assert np.array_equal(load_label_png(raw / "groundtruth/segmentation" / f"{stem}.png"), truth.segmentation)

    listing = [line.split() for line in (raw / VAL_SYNSETS).read_text().splitlines()]
    with tarfile.open(raw / VAL_TAR) as val:
        assert val.getnames() == [name for name, _ in listing]
    assert [name for name, _ in listing] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 7)]
    assert sorted(s for _, s in listing) == sorted(list(synsets) * 2)
    stems = {p.stem for p in (raw / "groundtruth/depth").iterdir()}
    assert stems == {p.stem for p in (raw / "groundtruth/segmentation").iterdir()}
    assert len(stems) == 18 and "ILSVRC2012_val_00000006" in stems


def test_demo_is_deterministic_for_any_number_of_workers_and_the_seed_matters(tmp_path):
    acquire.run(DataConfig(demo=TINY), tmp_path / "a")
    acquire.run(DataConfig(demo=TINY), tmp_path / "b", workers=2)
    for name in (TRAIN_TAR, VAL_TAR, VAL_SYNSETS, "synsets.json"):
        assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name)
    for path in (tmp_path / "a" / "groundtruth").rglob("*.png"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    acquire.run(DataConfig(demo=DemoConfig(**{**TINY.__dict__, "seed": 4})), tmp_path / "c")
    assert sha(tmp_path / "a" / TRAIN_TAR) != sha(tmp_path / "c" / TRAIN_TAR)


def test_demo_archives_extract_cleanly(tmp_path):
    acquire.run(DataConfig(demo=TINY), tmp_path / "raw")
    m = extract.run(ExtractConfig(), tmp_path / "raw", tmp_path / "im", tmp_path / "m.json")
    assert (m["train"]["extracted"], m["validation"]["extracted"]) == (12, 6)
    assert m["train"]["rejected"] == m["validation"]["rejected"] == 0


def _fake_imagenet(folder):
    folder.mkdir()
    (folder / "train.tar").write_bytes(b"t" * 1000)
    (folder / "val.tar").write_bytes(b"v" * 500)
    (folder / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG n02\nILSVRC2012_val_00000002.JPEG n01\n")
    (folder / "human.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    return ImagenetConfig(str(folder / "train.tar"), str(folder / "val.tar"), str(folder / "val.txt"),
                          str(folder / "human.txt"))


def test_imagenet_sizes_are_checked_before_anything_is_copied(tmp_path):
    cfg = _fake_imagenet(tmp_path / "src")
    with pytest.raises(AcquireError) as e:
        acquire.run(DataConfig(source="imagenet", imagenet=cfg), tmp_path / "raw")
    assert str(tmp_path / "src" / "train.tar") in str(e.value)
    assert f"official {TRAIN_TAR} has {OFFICIAL_SIZES[TRAIN_TAR]}" in str(e.value)
    assert not (tmp_path / "raw" / TRAIN_TAR).exists()
    cfg.val_tar = str(tmp_path / "src" / "missing.tar")
    with pytest.raises(AcquireError, match="missing.tar: file not found"):
        acquire.run(DataConfig(source="imagenet", imagenet=cfg), tmp_path / "raw")


def test_imagenet_local_files_are_linked_and_synsets_indexed(tmp_path):
    cfg = _fake_imagenet(tmp_path / "src")
    cfg.check_sizes = False
    acquire.run(DataConfig(source="imagenet", imagenet=cfg), tmp_path / "raw")
    raw = tmp_path / "raw"
    assert (raw / TRAIN_TAR).read_bytes() == b"t" * 1000 and (raw / VAL_TAR).read_bytes() == b"v" * 500
    assert (raw / TRAIN_TAR).stat().st_ino == (tmp_path / "src" / "train.tar").stat().st_ino   # no copy
    assert json.loads((raw / "synsets.json").read_text()) == {
        "n01": {"index": 0, "human": "tench, Tinca tinca"}, "n02": {"index": 1, "human": "goldfish"}}
    acquire.run(DataConfig(source="imagenet", imagenet=cfg), raw)          # rerun: already there
    assert (raw / VAL_SYNSETS).read_text() == (tmp_path / "src" / "val.txt").read_text()


def test_imagenet_from_s3(tmp_path, s3_server):
    from models import s3

    s3_server.create_bucket("imagenet-src")
    client = s3.client()
    local = _fake_imagenet(tmp_path / "src")
    for name in ("train.tar", "val.tar", "val.txt"):
        client.upload_file(str(tmp_path / "src" / name), "imagenet-src", f"ilsvrc/{name}")
    cfg = ImagenetConfig("s3://imagenet-src/ilsvrc/train.tar", "s3://imagenet-src/ilsvrc/val.tar",
                         "s3://imagenet-src/ilsvrc/val.txt", local.synset_human)
    with pytest.raises(AcquireError, match="s3://imagenet-src/ilsvrc/train.tar: 1000 bytes"):
        acquire.run(DataConfig(source="imagenet", imagenet=cfg), tmp_path / "raw")
    cfg.check_sizes = False
    acquire.run(DataConfig(source="imagenet", imagenet=cfg), tmp_path / "raw")
    assert (tmp_path / "raw" / TRAIN_TAR).read_bytes() == b"t" * 1000
    cfg.val_tar = "s3://imagenet-src/ilsvrc/nope.tar"
    with pytest.raises(AcquireError, match="nope.tar: cannot read it from S3"):
        acquire.run(DataConfig(source="imagenet", imagenet=cfg), tmp_path / "raw")


def test_custom_lists_are_packed_unchanged_as_one_class(tmp_path):
    images = tmp_path / "mine"
    images.mkdir()
    for i, fmt in enumerate(["PNG", "JPEG", "PNG"]):
        Image.new("RGB", (9, 7), (40 * i, 10, 10)).save(images / f"im{i}.{fmt.lower()}", format=fmt)
    (images / "train.txt").write_text("im0.png\nim1.jpeg\n\n")
    (tmp_path / "test.txt").write_text(f"{images / 'im2.png'}\n")
    cfg = DataConfig(source="custom", custom=CustomConfig(str(images / "train.txt"), str(tmp_path / "test.txt")))
    assert acquire.run(cfg, tmp_path / "raw")["train"] == 2
    raw = tmp_path / "raw"
    with tarfile.open(raw / TRAIN_TAR) as outer:
        inner = tarfile.open(fileobj=outer.extractfile("custom.tar"))
        assert inner.extractfile("custom_00000001.JPEG").read() == (images / "im0.png").read_bytes()
    sources = json.loads((raw / "sources.json").read_text())
    assert sources["custom_test_00000001.JPEG"] == str(images / "im2.png")
    m = extract.run(ExtractConfig(), raw, tmp_path / "im", tmp_path / "m.json")
    assert m["train"]["extracted"] == 2 and m["validation"]["extracted"] == 1
    assert m["train"]["converted"] == {"PNG data under a .JPEG name": 1}

    (images / "train.txt").write_text("im0.png\nghost.png\n")
    with pytest.raises(StageError, match=r"train.txt:2: image 'ghost.png' not found"):
        acquire.run(cfg, tmp_path / "raw2")


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.imagenet.train_tar: required"):
        build(DataConfig, {"source": "imagenet"}, "data")
    with pytest.raises(ConfigError, match="data.custom.train_list: required"):
        build(DataConfig, {"source": "custom"}, "data")
    with pytest.raises(ConfigError, match="data.demo.classes"):
        build(DataConfig, {"demo": {"classes": 11}}, "data")
    with pytest.raises(ConfigError, match="data.source"):
        build(DataConfig, {"source": "laion"}, "data")


def test_cli(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", data={
        "source": "demo", "demo": {"resolution": 16, "classes": 2, "n_train": 2, "n_val": 1}})
    assert cli.main(["acquire", "--params", str(params), "--out", str(tmp_path / "raw")]) == 0
    assert "acquire: source=demo, train=4, validation=2, classes=2" in capsys.readouterr().out
    write_params(params, data={"source": "custom", "custom": {"train_list": "nope.txt", "test_list": "nope.txt"}})
    assert cli.main(["acquire", "--params", str(params), "--out", str(tmp_path / "raw")]) == 1
    assert "nope.txt: image list not found" in capsys.readouterr().err


def test_custom_lists_stay_under_their_folder_unless_told_otherwise(tmp_path):
    """A list is untrusted input: `../../etc/passwd`, an absolute path or a symlink leading out
    of the list's folder would be packed into data/raw (and pushed by `make push`)."""
    lists = tmp_path / "project" / "lists"
    images = tmp_path / "project" / "images"
    for folder in (lists, images):
        folder.mkdir(parents=True)
    Image.new("RGB", (9, 7), (1, 2, 3)).save(lists / "ok.png")
    Image.new("RGB", (9, 7), (4, 5, 6)).save(images / "shared.png")
    (tmp_path / "secret.txt").write_text("not yours")
    os.symlink(tmp_path / "secret.txt", lists / "innocent.png")
    os.mkfifo(lists / "pipe.png")
    (lists / "test.txt").write_text("ok.png\n")
    depth = "../" * len(lists.parts)
    cases = {f"{depth}etc/passwd": "is outside", "/etc/passwd": "is outside", "innocent.png": "is outside",
             "../images/shared.png": "is outside", "pipe.png": "is a FIFO, not a regular file"}
    for line, reason in cases.items():
        (lists / "train.txt").write_text(f"ok.png\n{line}\n")
        cfg = DataConfig(source="custom", custom=CustomConfig(str(lists / "train.txt"), str(lists / "test.txt")))
        with pytest.raises(StageError, match=re.escape(f"train.txt:2: image {line!r} {reason}")) as e:
            acquire.run(cfg, tmp_path / "raw")
        if reason == "is outside":
            assert "data.custom.allow_outside: true" in str(e.value)
        with pytest.raises(StageError, match=re.escape(f"train.txt:2: image {line!r} {reason}")):
            FileListDataset(lists / "train.txt")
    assert not (tmp_path / "raw" / TRAIN_TAR).exists()

    # a configured root that holds both folders, or an explicit opt-in, reads them
    (lists / "train.txt").write_text("ok.png\n../images/shared.png\n")
    cfg = DataConfig(source="custom", custom=CustomConfig(str(lists / "train.txt"), str(lists / "test.txt"),
                                                          root=str(tmp_path / "project")))
    assert acquire.run(cfg, tmp_path / "raw")["train"] == 2
    assert len(FileListDataset(lists / "train.txt", root=tmp_path / "project")) == 2
    (lists / "train.txt").write_text(f"ok.png\n{images / 'shared.png'}\n")
    opt_in = build(DataConfig, {"source": "custom", "custom": {"train_list": str(lists / "train.txt"),
                                "test_list": str(lists / "test.txt"), "allow_outside": True}}, "data")
    assert acquire.run(opt_in, tmp_path / "raw2")["train"] == 2
