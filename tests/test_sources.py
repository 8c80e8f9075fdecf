"""The paper's other datasets as data sources: each read in the layout its download has
(fixtures: tests/source_fixtures.py), packed by `acquire`, extracted by `extract` into the
same layout as every source, their own label maps converted by `source-maps` under the
original's label conventions; a wrong layout is refused naming the path and what was expected."""
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from source_fixtures import EXAMPLES, example_pairs, make_ade20k, make_celebahq, make_coco, make_ffhq, make_photo_folder

from tasks import acquire, cli, extract, source_maps
from tasks.config.params import from_dict
from tasks.config.schema import (
    ADE20kConfig,
    CelebAHQConfig,
    CocoStuffConfig,
    DataConfig,
    ExtractConfig,
    FFHQConfig,
    FolderConfig,
)
from tasks.config.typed import ConfigError
from tasks.data.faces import read_npy_picture, split_names
from tasks.data.formats import load_label_png
from tasks.data.layout import TRAIN_TAR, Layout
from tasks.data.limits import MAX_IMAGE_BYTES
from tasks.data.sources import SourceError

REPO = EXAMPLES.parent


def acquire_and_extract(tmp_path, cfg: DataConfig, workers: int = 1) -> tuple[Layout, dict]:
    layout = Layout(tmp_path / "data")
    acquire.run(cfg, layout.raw, workers=workers)
    metrics = extract.run(ExtractConfig(), layout.raw, layout.images, tmp_path / "extract.json")
    return layout, metrics


def filelist(layout: Layout, split: str) -> list[str]:
    return layout.filelist(split).read_text().split()


# ----------------------------------------------------------------------------- faces

@pytest.mark.parametrize("grouped", [True, False])
def test_ffhq_in_either_layout_of_images1024x1024_is_split_by_the_original_lists(tmp_path, grouped):
    folder = make_ffhq(tmp_path / "src", grouped=grouped)
    cfg = DataConfig(source="ffhq", ffhq=FFHQConfig(str(folder), complete=False))
    layout, metrics = acquire_and_extract(tmp_path, cfg)
    train, val = split_names("ffhq", "train")[:4], split_names("ffhq", "validation")[:2]
    assert filelist(layout, "train") == sorted(f"ffhq/{n.replace('.png', '.JPEG')}" for n in train)
    assert filelist(layout, "validation") == sorted(f"ffhq/{n.replace('.png', '.JPEG')}" for n in val)
    assert json.loads(layout.synsets_json.read_text()) == {"ffhq": {"index": 0, "human": "FFHQ"}}
    # the PNGs are kept byte for byte (extract counts them as PNG data under a .JPEG name)
    name = train[0]
    source = next(folder.rglob(name))
    assert (layout.images / "train/ffhq" / name.replace(".png", ".JPEG")).read_bytes() == source.read_bytes()
    assert metrics["train"]["converted"] == {"PNG data under a .JPEG name": 4}
    assert json.loads((layout.raw / "sources.json").read_text())[name.replace(".png", ".JPEG")] == str(source)


def test_celebahq_arrays_become_lossless_pngs_and_faceshq_is_celebahq_then_ffhq(tmp_path):
    celebahq, ffhq = make_celebahq(tmp_path / "src"), make_ffhq(tmp_path / "src")
    cfg = DataConfig(source="faceshq", celebahq=CelebAHQConfig(str(celebahq), complete=False),
                     ffhq=FFHQConfig(str(ffhq), complete=False))
    layout, metrics = acquire_and_extract(tmp_path, cfg, workers=2)
    assert json.loads(layout.synsets_json.read_text()) == {"celebahq": {"index": 0, "human": "CelebA-HQ"},
                                                           "ffhq": {"index": 1, "human": "FFHQ"}}
    assert (metrics["train"]["extracted"], metrics["validation"]["extracted"]) == (8, 4)
    name = split_names("celebahq", "validation")[0]
    extracted = np.asarray(Image.open(layout.images / "validation/celebahq" / name.replace(".npy", ".JPEG")))
    assert np.array_equal(extracted, np.load(celebahq / name)[0].transpose(1, 2, 0))
    with tarfile.open(layout.raw / TRAIN_TAR) as outer:
        assert outer.getnames() == ["celebahq.tar", "ffhq.tar"]


def test_a_partial_or_misplaced_download_names_the_path_and_what_was_expected(tmp_path):
    ffhq = make_ffhq(tmp_path / "src")
    with pytest.raises(SourceError, match=r"images1024x1024: 59996 of the 60000 FFHQ train images .* are missing "
                                          r"\(e.g. .*; looked for <root>/<NN000>/<NNNNN>.png\).*data.ffhq.complete: false"):
        acquire.run(DataConfig(source="ffhq", ffhq=FFHQConfig(str(ffhq))), tmp_path / "raw")
    with pytest.raises(SourceError, match=r"src: holds an images1024x1024 folder; data.ffhq.root must be that folder"):
        acquire.run(DataConfig(source="ffhq", ffhq=FFHQConfig(str(tmp_path / "src"))), tmp_path / "raw")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"empty: none of the 60000 FFHQ train images .*\(looked for <root>/<NNNNN>.png"):
        acquire.run(DataConfig(source="ffhq", ffhq=FFHQConfig(str(empty), complete=False)), tmp_path / "raw")
    with pytest.raises(SourceError, match=r"nowhere: not found; expected FFHQ's images1024x1024 folder"):
        acquire.run(DataConfig(source="ffhq", ffhq=FFHQConfig(str(tmp_path / "nowhere"))), tmp_path / "raw")
    pngs = tmp_path / "celebahq-as-png"
    pngs.mkdir()
    Image.new("RGB", (4, 4)).save(pngs / "imgHQ00000.png")
    with pytest.raises(SourceError, match=r"celebahq-as-png: holds images but not the imgHQ<NNNNN>.npy files"):
        acquire.run(DataConfig(source="celebahq", celebahq=CelebAHQConfig(str(pngs), complete=False)), tmp_path / "raw")
    assert not (tmp_path / "raw" / TRAIN_TAR).exists()    # the layout is checked before anything is written


def _npy(path, header_shape, dtype="|u1", payload=b""):
    """A .npy file whose header claims ``header_shape`` and ``dtype``, with ``payload`` after it."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(header_shape)}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload)
    return path


def test_celebahq_arrays_are_read_without_pickles_and_within_bounds(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.arange(3 * 4 * 5, dtype=np.uint8).reshape(1, 3, 4, 5))
    assert read_npy_picture(good).shape == (4, 5, 3)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SourceError, match=r"objects.npy: holds a object array of shape \(1,\); expected a \(1, 3, H, W\)"):
        read_npy_picture(tmp_path / "objects.npy")
    np.save(tmp_path / "floats.npy", np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(SourceError, match=r"floats.npy: holds a float32 array"):
        read_npy_picture(tmp_path / "floats.npy")
    huge = _npy(tmp_path / "huge.npy", (1, 3, 100_000, 100_000))    # 30 GB claimed, nothing read
    with pytest.raises(SourceError, match=r"huge.npy: a 100000x100000 picture; expected sides of 1..4096 px"):
        read_npy_picture(huge)
    short = _npy(tmp_path / "short.npy", (1, 3, 8, 8), payload=b"\0" * 10)
    with pytest.raises(SourceError, match=r"short.npy: truncated or corrupt"):
        read_npy_picture(short)
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(SourceError, match=r"text.npy: not a readable .npy file"):
        read_npy_picture(tmp_path / "text.npy")


# ----------------------------------------------------------------------------- COCO-Stuff, ADE20k

def test_coco_stuff_maps_are_shifted_as_the_original_reads_them(tmp_path):
    coco, stuff = make_coco(tmp_path / "src")
    cfg = DataConfig(source="coco_stuff", coco_stuff=CocoStuffConfig(str(coco), str(stuff), complete=False))
    layout, metrics = acquire_and_extract(tmp_path, cfg)
    assert (metrics["train"]["extracted"], metrics["validation"]["extracted"]) == (6, 2)
    counts = source_maps.run("segmentation", layout, workers=2)
    assert counts == {"train": {"maps": 6, "written": 6, "skipped_no_image": 0},
                      "validation": {"maps": 2, "written": 2, "skipped_no_image": 0}}
    for photo, shipped in example_pairs("coco")[6:]:
        labels = load_label_png(layout.maps("segmentation") / "validation/coco" / f"{photo.stem}.png")
        stored = np.asarray(Image.open(stuff / "val2017" / f"{photo.stem}.png"))
        assert labels.shape == stored.shape == np.asarray(Image.open(photo)).shape[:2]
        assert np.array_equal(labels[stored == 255], np.zeros((stored == 255).sum(), np.uint8))   # unlabelled: 0
        assert np.array_equal(labels[stored != 255], stored[stored != 255] + 1)
        assert np.array_equal(labels, np.asarray(Image.open(shipped)))      # = the shipped example, as read
        assert (stored == 255).any() and labels.max() <= 182
    info = json.loads((layout.maps("segmentation") / "source.json").read_text())
    assert (info["n_labels"], info["shift"]) == (183, 1)


def test_ade20k_maps_are_read_as_stored_and_a_rejected_image_skips_its_map(tmp_path):
    root = make_ade20k(tmp_path / "src")
    (root / "images/training/ADE_train_00000002.jpg").write_bytes(b"\xff\xd8 truncated")
    layout, metrics = acquire_and_extract(tmp_path, DataConfig(source="ade20k", ade20k=ADE20kConfig(str(root),
                                                                                                     complete=False)))
    assert (metrics["train"]["extracted"], metrics["train"]["rejected"]) == (5, 1)
    counts = source_maps.run("segmentation", layout)
    assert counts["train"] == {"maps": 6, "written": 5, "skipped_no_image": 1}
    labels = load_label_png(layout.maps("segmentation") / "validation/ade20k/ADE_val_00000001.png")
    assert np.array_equal(labels, np.asarray(Image.open(root / "annotations/validation/ADE_val_00000001.png")))
    assert not (layout.maps("segmentation") / "train/ade20k/ADE_train_00000002.png").exists()


def test_label_maps_that_do_not_fit_are_refused_naming_the_file(tmp_path):
    root = make_ade20k(tmp_path / "src")
    layout, _ = acquire_and_extract(tmp_path, DataConfig(source="ade20k", ade20k=ADE20kConfig(str(root), complete=False)))
    raw = layout.raw / "segmentation_validation.tar"
    members = {}
    with tarfile.open(raw) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}

    def repack(name, data):
        with tarfile.open(raw, "w") as tar:
            for member, payload in {**members, name: data}.items():
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))

    def png(array, mode="L"):
        buffer = io.BytesIO()
        Image.fromarray(array, mode=mode).save(buffer, format="PNG")
        return buffer.getvalue()

    name = "ADE_val_00000001.png"
    repack(name, png(np.zeros((5, 7), np.uint8)))
    with pytest.raises(source_maps.SourceMapsError, match=r"segmentation_validation.tar/ADE_val_00000001.png: 7x5 px, "
                                                          r"but its image .* is \d+x\d+"):
        source_maps.run("segmentation", layout)
    size = Image.open(layout.images / "validation/ade20k/ADE_val_00000001.JPEG").size
    repack(name, png(np.full(size[::-1], 151, np.uint8)))
    with pytest.raises(source_maps.SourceMapsError, match=r"label 151 .* outside the 151 labels of ADE20k"):
        source_maps.run("segmentation", layout)
    repack(name, png(np.zeros(size[::-1] + (3,), np.uint8), "RGB"))
    with pytest.raises(source_maps.SourceMapsError, match=r"a PNG image of mode RGB; expected an 8-bit single-channel"):
        source_maps.run("segmentation", layout)
    repack(name, b"%!PS-Adobe-3.0 EPSF-3.0\n")           # only PNG/JPEG/BMP/WebP decoders ever see a map
    with pytest.raises(source_maps.SourceMapsError, match=r"ADE_val_00000001.png: unreadable PNG: "):
        source_maps.run("segmentation", layout)
    link = tarfile.TarInfo(name)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with tarfile.open(raw, "w") as tar:
        tar.addfile(link)
    with pytest.raises(source_maps.SourceMapsError, match=r"segmentation_validation.tar: member "
                                                          r"'ADE_val_00000001.png': symlink"):
        source_maps.run("segmentation", layout)
    members.pop(name)
    repack("ADE_val_00000002.png", members["ADE_val_00000002.png"])
    with pytest.raises(source_maps.SourceMapsError, match=r"no map for 1 extracted validation image\(s\), "
                                                          r"e.g. ade20k/ADE_val_00000001.JPEG"):
        source_maps.run("segmentation", layout)


def test_coco_and_ade20k_layouts_are_checked(tmp_path):
    coco, stuff = make_coco(tmp_path / "src")
    run = lambda cfg: acquire.run(cfg, tmp_path / "raw")   # noqa: E731
    with pytest.raises(SourceError, match=r"src/coco/train2017: 6 COCO train images \(.jpg\), but the official dataset has "
                                          r"118287.*data.coco_stuff.complete: false"):
        run(DataConfig(source="coco_stuff", coco_stuff=CocoStuffConfig(str(coco.parent / "coco"), str(stuff))))
    with pytest.raises(SourceError, match=r"src/train2017: not found; expected COCO 2017's train2017/ image folder"):
        run(DataConfig(source="coco_stuff", coco_stuff=CocoStuffConfig(str(coco.parent), str(stuff), complete=False)))
    with pytest.raises(SourceError, match=r"src/train2017: not found; expected the train2017/ folder of COCO-Stuff's "
                                          r"stuff\+thing label PNGs"):
        run(DataConfig(source="coco_stuff", coco_stuff=CocoStuffConfig(str(coco), str(coco.parent), complete=False)))
    (stuff / "val2017" / f"{example_pairs('coco')[7][0].stem}.png").unlink()
    with pytest.raises(SourceError, match=r"val2017: 1 of 2 COCO validation images have no label map"):
        run(DataConfig(source="coco_stuff", coco_stuff=CocoStuffConfig(str(coco), str(stuff), complete=False)))
    ade = make_ade20k(tmp_path / "src")
    with pytest.raises(SourceError, match=r"src: holds an ADEChallengeData2016 folder; data.ade20k.root must be"):
        run(DataConfig(source="ade20k", ade20k=ADE20kConfig(str(ade.parent), complete=False)))
    (ade / "annotations/training/ADE_train_00000003.png").unlink()
    with pytest.raises(SourceError, match=r"training: 1 of 6 ADE20k train images have no annotation"):
        run(DataConfig(source="ade20k", ade20k=ADE20kConfig(str(ade), complete=False)))


# ----------------------------------------------------------------------------- a folder of photos (S-FLCKR)

def test_a_folder_of_photos_is_split_at_random_by_path(tmp_path):
    folder = make_photo_folder(tmp_path / "src")
    cfg = DataConfig(source="folder", folder=FolderConfig(str(folder), validation_fraction=0.3, seed=1))
    layout, metrics = acquire_and_extract(tmp_path, cfg)
    sources = json.loads((layout.raw / "sources.json").read_text())
    assert sorted(sources.values()) == sorted(str(p) for p in folder.rglob("*.jpg"))
    val = [n for n in filelist(layout, "validation")]
    assert 1 <= len(val) <= 6 and metrics["train"]["extracted"] + len(val) == 8
    assert all(n.startswith("photos/photos_val_") for n in val)
    again, _ = acquire_and_extract(tmp_path / "again", cfg)
    assert filelist(again, "validation") == val                   # the split depends on the paths and the seed only
    other, _ = acquire_and_extract(tmp_path / "other", DataConfig(source="folder", folder=FolderConfig(
        str(folder), validation_fraction=0.3, seed=2)))
    assert json.loads((other.raw / "sources.json").read_text()) != sources


def test_an_oversized_photo_is_refused_before_it_is_read(tmp_path):
    folder = make_photo_folder(tmp_path / "src")
    big = sorted(folder.rglob("*.jpg"))[0]
    os.truncate(big, MAX_IMAGE_BYTES + 1)                         # sparse: costs no disk
    cfg = DataConfig(source="folder", folder=FolderConfig(str(folder), validation_fraction=0.3, seed=1))
    with pytest.raises(SourceError, match=rf"{re.escape(str(big))}: {MAX_IMAGE_BYTES + 1} bytes, more than the limit"):
        acquire.run(cfg, Layout(tmp_path / "data").raw)


# ----------------------------------------------------------------------------- params

def smoke_params() -> dict:
    return yaml.safe_load((REPO / "profiles/smoke.yaml").read_text())


def coco_params(n_classes: int = 183) -> dict:
    params = smoke_params()
    params.update(conditioning="segmentation", annotate={}, source_maps={"segmentation": {}})
    params["data"] = {"source": "coco_stuff", "coco_stuff": {"root": "c", "stuffthing_root": "s"}}
    params["vqgan"]["segmentation"] = {**params["vqgan"].pop("depth"), "n_classes": n_classes}
    return params


@pytest.mark.parametrize("change, message", [
    (lambda p: None, None),
    (lambda p: p["vqgan"]["segmentation"].update(n_classes=182),
     r"vqgan.segmentation.n_classes: 182, but data.source coco_stuff's maps \(COCO-Stuff .*\) have 183 labels"),
    (lambda p: p["data"].update(source="ade20k", ade20k={"root": "a"}),
     r"vqgan.segmentation.n_classes: 183, but data.source ade20k's maps .* have 151 labels"),
    (lambda p: p["data"].update(source="imagenet", imagenet={"train_tar": "t", "val_tar": "v",
                                                               "validation_synsets": "s"}),
     r"source_maps.segmentation: data.source imagenet ships no maps; compute them with annotate.segmentation"),
    (lambda p: p["data"].update(source="coco", coco={"root": "c"}),     # COCO's boxes (scenes) carry no label maps
     r"source_maps.segmentation: data.source coco ships no maps; .*\(sources with maps: coco_stuff \(segmentation\)"),
    (lambda p: p["annotate"].update(segmentation={"model": "groundtruth"}),
     r"source_maps.segmentation: the segmentation maps come from data.source coco_stuff or from annotate.segmentation, "
     r"not both"),
    (lambda p: p["source_maps"].update(segmentation={"labels": 183}), r"source_maps.segmentation: takes no settings"),
    (lambda p: p.update(source_maps={}), r"add annotate.segmentation .* or source_maps.segmentation: \{\} "
                                         r"\(data.source coco_stuff ships them\)"),
    (lambda p: (p.update(conditioning="none"), p["vqgan"].pop("segmentation")),
     r"conditioning none reads no per-image maps; source_maps.segmentation would be imported for nothing"),
    (lambda p: (p["source_maps"].clear(), p["annotate"].update(segmentation={"model": "deeplabv2_cocostuff"})),
     r"vqgan.segmentation.n_classes: 183, but annotate.segmentation's deeplabv2_cocostuff have 182 labels"),
    (lambda p: p["data"].update(source="coco_stuff", coco_stuff={"root": "c"}), r"data.coco_stuff.stuffthing_root: required"),
])
def test_source_maps_replace_the_annotator_and_fix_the_label_count(change, message):
    params = coco_params()
    change(params)
    if message is None:
        config = from_dict(params)
        assert config.source_maps["segmentation"].n_labels == 183 and config.annotate == {}
        return
    with pytest.raises(ConfigError, match=message):
        from_dict(params)


@pytest.mark.parametrize("change, message", [
    (lambda p: None, None),
    (lambda p: p["annotate"].update(depth={"model": "groundtruth"}),
     r"conditioning coord reads no per-image maps; annotate.depth would be computed for nothing"),
    (lambda p: p["vqgan"].update(depth=p["vqgan"]["image"]), r"vqgan.depth: nothing reads it"),
    (lambda p: p["tokenize"].update(rescale=8), r"tokenize.rescale: 8 px is less than the crops' 16 px"),
    (lambda p: p["vqgan"]["image"].update(rescale=8), r"vqgan.image.rescale: 8 must be >= resolution 16"),
    (lambda p: p["tokenize"].update(coord_n_embed=70000), r"tokenize.coord_n_embed: must be in 2..65536"),
    (lambda p: p["tokenize"].update(coord_n_embed=64), r"tokenize.coord_n_embed: 64 coordinate levels, more than the "
                                                       r"image codebook's 32 entries"),
])
def test_coordinate_conditioning_needs_no_maps_and_no_second_first_stage(change, message):
    params = smoke_params()
    params.update(conditioning="coord", annotate={})
    params["vqgan"].pop("depth")
    params["tokenize"].update(rescale=32, coord_n_embed=32)
    change(params)
    if message is None:
        assert from_dict(params).tokenize.rescale == 32
        return
    with pytest.raises(ConfigError, match=message):
        from_dict(params)


def test_the_source_maps_command_refuses_a_source_without_maps(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(coco_params()))
    assert cli.main(["source-maps", "--kind", "segmentation"]) == 1
    assert "data/raw/maps.json: not found; the data source ships no label maps" in capsys.readouterr().err
    Path("data/raw").mkdir(parents=True)
    Path("data/raw/maps.json").write_text("{}")
    assert cli.main(["source-maps", "--kind", "segmentation"]) == 1
    assert "maps.json: the data source ships no segmentation maps (none); compute them with annotate.segmentation" \
        in capsys.readouterr().err
