"""Datasets: the sample dict contract, the original preprocessing, the same crop for image and maps."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tasks import acquire, extract
from tasks.config.schema import DataConfig, DemoConfig, ExtractConfig
from tasks.data.annotation import load_image
from tasks.data.datasets import FileListDataset, ImageNetDataset, Preprocess, normalised_depth
from tasks.data.formats import load_depth_png, save_depth_png, save_label_png
from tasks.data.images import ImageRefused

H, W = 24, 32
SYNSETS = {"n01": {"index": 0, "human": "tench"}, "n02": {"index": 1, "human": "goldfish"},
           "n03": {"index": 2, "human": "shark"}}


def coordinate_image() -> np.ndarray:
    """R = 8 * column, G = 8 * row: every pixel says where it came from (lossless PNG)."""
    rows, cols = np.mgrid[0:H, 0:W]
    return np.stack([cols * 8, rows * 8, np.full_like(rows, 128)], -1).astype(np.uint8)


@pytest.fixture
def tree(tmp_path):
    """A tiny extracted tree with depth and segmentation maps that also encode pixel coordinates."""
    rows, cols = np.mgrid[0:H, 0:W]
    files = []
    for synset in ("n01", "n03"):
        for i in range(2):
            rel = f"{synset}/{synset}_{i}.JPEG"
            (tmp_path / "im" / "train" / synset).mkdir(parents=True, exist_ok=True)
            Image.fromarray(coordinate_image()).save(tmp_path / "im" / "train" / rel, format="PNG")
            stem = rel[:-5]
            save_depth_png(tmp_path / "depth" / "train" / f"{stem}.png", (3.0 + cols + 100 * rows).astype(np.float32))
            save_label_png(tmp_path / "seg" / "train" / f"{stem}.png", cols.astype(np.uint8))
            files.append(rel)
    (tmp_path / "im" / "train" / "filelist.txt").write_text("".join(f + "\n" for f in files))
    (tmp_path / "synsets.json").write_text(json.dumps(SYNSETS))
    return tmp_path


def make(tree, **kw):
    return ImageNetDataset(tree / "im", "train", synsets_json=tree / "synsets.json", depth_root=tree / "depth",
                           segmentation_root=tree / "seg", **kw)


def test_sample_dict_layout_and_ranges(tree):
    ds = make(tree)
    assert len(ds) == 4
    s = ds[2]
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert -1 <= s["image"].min() and s["image"].max() <= 1
    assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
    assert s["depth"].min() == -1 and s["depth"].max() == 1          # per-image min-max over the full map
    assert s["segmentation"].shape == (H, W) and s["segmentation"].dtype == torch.int64
    # the class label is the synset's index in synsets.json (n02 has no images here)
    assert (s["class_label"], s["synset"], s["human_label"], s["relpath"]) == (2, "n03", "shark", "n03/n03_0.JPEG")
    # image exactly uint8 / 127.5 - 1
    assert torch.equal(s["image"], torch.from_numpy(coordinate_image()).permute(2, 0, 1).float() / 127.5 - 1)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, H, W) and batch["class_label"].tolist() == [0, 0, 2, 2]


@pytest.mark.parametrize("flip", [False, True])
def test_random_crop_and_flip_are_the_same_for_image_and_maps(tree, flip):
    torch.manual_seed(0)
    ds = make(tree, size=H, random_crop=True, flip=flip)   # shorter side already H: crop only
    lefts, flipped = set(), set()
    raw_depth = normalised_depth(tree / "depth/train/n01/n01_0.png")
    for _ in range(12):
        s = ds[0]
        cols = ((s["image"][0] + 1) * 127.5).round().long() // 8
        rows = ((s["image"][1] + 1) * 127.5).round().long() // 8
        assert s["image"].shape == (3, H, H)
        assert torch.equal(s["segmentation"], cols)                       # labels follow the pixels
        assert torch.equal(s["depth"][0], torch.from_numpy(raw_depth)[rows, cols])
        lefts.add(int(cols.min()))
        flipped.add(bool(cols[0, 0] > cols[0, -1]))
    assert len(lefts) > 1                                                 # the crop does move
    assert flipped == ({False, True} if flip else {False})


def test_shorter_side_rescale_then_centre_crop(tree):
    s = make(tree, size=12)[0]            # 24x32 -> 12x16 -> centre 12x12
    assert s["image"].shape == (3, 12, 12) and s["depth"].shape == (1, 12, 12)
    seg = s["segmentation"]
    assert seg.shape == (12, 12)
    assert set(seg.unique().tolist()) <= set(range(W))                     # nearest: no blended ids
    assert seg[0].tolist() == sorted(seg[0].tolist()) and 2 <= int(seg[0, 0]) <= 6   # cropped 2 of 16 columns
    upscaled = Preprocess(40)(coordinate_image(), {})[0]
    assert upscaled.shape == (40, 40, 3)


def test_crops_of_a_larger_image_carry_their_coordinates_and_mirrors_keep_them(tree):
    """rescale: crops cut from an image scaled to a larger shorter side (the original's size >
    crop_size); coord: where each crop lies in it, as the original FacesHQ's coordinates."""
    torch.manual_seed(0)
    ds = make(tree, size=12, rescale=24, random_crop=True, flip=True, coord=True)    # 24x32 kept, 12x12 crops
    seen_flips = set()
    for _ in range(12):
        s = ds[0]
        cols = ((s["image"][0] + 1) * 127.5).round().long() // 8
        rows = ((s["image"][1] + 1) * 127.5).round().long() // 8
        flipped = bool(cols[0, 0] > cols[0, -1])
        seen_flips.add(flipped)
        top, left = int(rows.min()), int(cols.min())
        r, c = np.mgrid[top:top + 12, left:left + 12]
        assert s["coord"].shape == (1, 12, 12) and s["coord"].dtype == torch.float32
        assert torch.allclose(s["coord"][0], torch.from_numpy((r * W + c) / (H * W)).float())   # never mirrored
        assert torch.equal(s["segmentation"], cols)
    assert seen_flips == {False, True}
    centre = make(tree, size=H, coord=True)[0]["coord"][0]       # the whole height: 0 at the top-left pixel
    assert float(centre[0, 0]) == pytest.approx(4 / (H * W)) and float(centre.max()) < 1
    with pytest.raises(ValueError, match="rescale 8 is smaller than the crop size 12"):
        make(tree, size=12, rescale=8)


def test_sub_indices_keep_the_class_labels_of_synsets_json(tree):
    """One definition of class labels: a subset, or a split missing a class, shifts nothing."""
    ds = make(tree, sub_indices="2")
    assert [ds[i]["synset"] for i in range(len(ds))] == ["n03", "n03"]
    assert [ds[i]["class_label"] for i in range(len(ds))] == [2, 2]


def test_missing_filelist_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="filelist.txt: not found"):
        ImageNetDataset(tmp_path, "validation")


def test_file_list_dataset_reads_any_image_as_rgb(tmp_path):
    Image.new("L", (20, 30), 77).save(tmp_path / "grey.png")
    Image.new("CMYK", (30, 20), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "list.txt").write_text("grey.png\ncmyk.jpg\n")
    ds = FileListDataset(tmp_path / "list.txt", size=16)
    assert len(ds) == 2
    for i in range(2):
        s = ds[i]
        assert s["image"].shape == (3, 16, 16)
        assert (s["class_label"], s["synset"]) == (0, "custom")
    assert ds[0]["relpath"] == "grey.png"
    assert torch.allclose(ds[0]["image"], torch.full((3, 16, 16), 77 / 127.5 - 1))


def test_demo_end_to_end_with_ground_truth_maps(tmp_path):
    """acquire demo -> extract -> dataset whose depth and segmentation come from the ground truth."""
    cfg = DataConfig(demo=DemoConfig(resolution=16, classes=2, n_train=2, n_val=1))
    acquire.run(cfg, tmp_path / "raw")
    extract.run(ExtractConfig(), tmp_path / "raw", tmp_path / "im", tmp_path / "m.json")
    for split in ("train", "validation"):
        for rel in (tmp_path / "im" / split / "filelist.txt").read_text().split():
            synset, name = rel.split("/")
            for kind in ("depth", "segmentation"):
                dst = tmp_path / kind / split / synset / f"{name[:-5]}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes((tmp_path / "raw" / "groundtruth" / kind / f"{name[:-5]}.png").read_bytes())
    ds = ImageNetDataset(tmp_path / "im", "validation", size=16, synsets_json=tmp_path / "raw" / "synsets.json",
                         depth_root=tmp_path / "depth", segmentation_root=tmp_path / "segmentation")
    for s in ds:
        assert s["human_label"] in ("sphere", "cube")
        # The main object's label (2 + class) is present, and its depth beats the sky's.
        main = s["segmentation"] == 2 + s["class_label"]
        assert main.any() and s["depth"][0][main].min() > s["depth"][0][s["segmentation"] == 0].max()


def ramp16() -> np.ndarray:
    """A 16-bit ramp over the whole range: 0 at the top left, 65535 at the bottom right."""
    return np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)


def save16(path, values: np.ndarray, big_endian: bool = False) -> None:
    mode, dtype = ("I;16B", ">u2") if big_endian else ("I;16", "<u2")
    Image.frombytes(mode, values.shape[::-1], values.astype(dtype).tobytes()).save(path, format="PNG")


def test_16_bit_pngs_are_scaled_not_saturated_wherever_images_are_read(tree, tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255 (99 % of this ramp would be white);
    the product reads v as round(v / 257) in every path: datasets, file lists, annotation."""
    values = ramp16()
    want8 = np.round(values / 257).astype(np.uint8)
    rel = "n01/n01_0.JPEG"            # extract keeps PNG bytes under a .JPEG name, as they came
    save16(tree / "im" / "train" / rel, values)
    with Image.open(tree / "im" / "train" / rel) as im:
        assert im.mode == "I;16" and (np.asarray(im.convert("RGB")) == 255).mean() > 0.9   # the bug
    image = make(tree)[0]["image"]
    assert torch.equal(image, torch.from_numpy(want8).float().expand(3, H, W) / 127.5 - 1)
    assert (image == 1).float().mean() < 0.01
    save16(tmp_path / "ramp.png", values, big_endian=True)
    (tmp_path / "list.txt").write_text("ramp.png\n")
    assert torch.equal(FileListDataset(tmp_path / "list.txt")[0]["image"], image)
    annotated = tmp_path / "data" / "dataset" / "image" / "train" / rel   # what the annotate stages read
    annotated.parent.mkdir(parents=True)
    save16(annotated, values)
    assert torch.equal(load_image(tmp_path / "data", "train", rel), torch.from_numpy(want8).expand(3, H, W))


def test_16_bit_greyscale_depth_maps_read_as_their_fraction_of_full_scale(tree):
    """A depth map written elsewhere as a 16-bit greyscale PNG (MiDaS's write_depth) reads as
    v / 65535; the datasets normalise per image, so it gives the same depth as the floats."""
    values = ramp16()
    path = tree / "depth" / "train" / "n01" / "n01_0.png"
    save16(path, values)
    assert np.allclose(load_depth_png(path), values / 65535, atol=1e-7)
    floats = tree / "float.png"
    save_depth_png(floats, values.astype(np.float32))
    assert np.allclose(normalised_depth(path), normalised_depth(floats), atol=1e-6)
    depth = make(tree)[0]["depth"][0]
    assert depth.min() == -1 and depth.max() == 1 and (depth == 1).sum() == 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")   # PIL's own, before our refusal
def test_datasets_decode_only_accepted_formats_of_bounded_size(tmp_path):
    """The datasets open images through the same gate as extract: an EPS file never reaches
    Ghostscript, a pixel bomb is refused from its header, specials are not opened."""
    (tmp_path / "page.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n")
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "scan.tif")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "ok.webp", lossless=True)
    (tmp_path / "list.txt").write_text("page.jpg\nbomb.png\nscan.tif\nok.webp\n")
    ds = FileListDataset(tmp_path / "list.txt")
    for i, reason in enumerate(["format EPS not accepted", "12000x12000 is more than 67108864 pixels",
                                "format TIFF not accepted"]):
        with pytest.raises(ImageRefused, match=f"{ds.paths[i]}: cannot read image: {reason}"):
            ds[i]
    assert torch.equal(ds[3]["image"][:, 0, 0], torch.tensor([1, 2, 3]) / 127.5 - 1)
    # in DataLoader workers the error still names the file
    with pytest.raises(Exception, match="page.jpg: cannot read image: format EPS not accepted"):
        next(iter(DataLoader(ds, batch_size=1, num_workers=1)))
