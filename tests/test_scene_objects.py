"""The annotated-objects datasets and the conditional builders against the original.

tests/reference/scene_coco holds what the original code (taming-transformers 3ba01b2)
built for 42 COCO records (its README states the contract): every token sequence, every
inverse build, the dataset's order, annotations, centre crops and category table are
reproduced exactly here. Open Images has no such set; its loader is checked on a trimmed
copy of real files (tests/data/open_images) against the original's rules, stated in
tasks/data/objects/open_images.py.
"""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.objects.annotations import Annotation
from tasks.data.objects.builders import BUILDERS, absolute_bbox
from tasks.data.objects.categories import CategoryTable
from tasks.data.objects.coco import CocoFormatError, load_coco
from tasks.data.objects.conditioning import SceneConditioning
from tasks.data.objects.crops import centre_crop_box, crop_box, cut, resized_size
from tasks.data.objects.json_stream import JSONStreamError, stream_arrays
from tasks.data.objects.open_images import OpenImagesFormatError, load_open_images

HERE = Path(__file__).resolve().parent
SCENE = HERE / "reference" / "scene_coco"
OPEN_IMAGES = HERE / "data" / "open_images"
GROUPS = ("validation", "train", "train_random_crop", "validation_extra_iscrowd")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((SCENE / "expected.json").read_text())


@pytest.fixture(scope="module")
def builders(expected) -> dict:
    p = expected["builder_params"]
    return {name: cls(p["no_object_classes"], p["no_max_objects"], p["no_tokens"], p["encode_crop"],
                      p["use_group_parameter"], p["use_additional_parameters"]) for name, cls in BUILDERS.items()}


def records(expected):
    return [(group, r) for group in GROUPS for r in expected[group]]


def annotations_of(record) -> list[Annotation]:
    return [Annotation(**{**a, "bbox": tuple(a["bbox"])}) for a in record["annotations"]]


# ----------------------------------------------------------------------------- the builders

def test_every_reference_sequence_and_inverse_build_is_reproduced(expected, builders):
    table = CategoryTable.coco()
    checked = 0
    for group, record in records(expected):
        annotations, crop, flip = annotations_of(record), tuple(record["crop_bbox"]), bool(record["flipped"])
        for name, builder in builders.items():
            want = record[name]
            tokens = builder.build(annotations, crop, flip)
            assert tokens == want["tokens"], f"{group}[{record['index']}] {name}"
            objects, crop_back = builder.inverse_build(tokens)
            inverse = want["inverse_build"]
            np.testing.assert_allclose(crop_back, inverse["crop"], rtol=0, atol=1e-12)
            assert len(objects) == len(inverse["objects"]) == len(want["objects"])
            where = "bbox" if name == "objects_bbox" else "center"
            for (representation, place), obj in zip(objects, inverse["objects"]):
                assert representation == obj["representation"]
                np.testing.assert_allclose(place, obj[where], rtol=0, atol=1e-12)
                decoded = builder.representation_to_annotation(representation)
                assert decoded.category_no == obj["category_no"] and table.name(decoded.category_no) == obj["label"]
                assert [decoded.is_group_of, decoded.is_occluded, decoded.is_depiction, decoded.is_inside] == \
                       [obj["is_group_of"], obj["is_occluded"], obj["is_depiction"], obj["is_inside"]]
            # each object's tokens, in sequence order
            per_object = [(o["representation"], o["tokens"]) for o in want["objects"]]
            n = builder.object_descriptor_length
            assert per_object == [(t[0], t[1:]) for t in (tokens[i:i + n] for i in range(0, n * len(per_object), n))]
            checked += 1
    assert checked == 84


def test_the_originals_shuffle_is_an_rng_given_to_build(expected, builders):
    """The original shuffles with the global `random` inside build(); the recorded sequences after
    random.seed(0) equal a build on that order, and what build(rng=random.Random(0)) returns.
    build never reorders the caller's list (the original reorders the dataset's stored one)."""
    for _, record in records(expected):
        annotations = annotations_of(record)
        by_id = {a.id: a for a in annotations}
        shuffled = record["shuffled"]
        before = list(annotations)
        for name, builder in builders.items():
            crop, flip = tuple(record["crop_bbox"]), bool(record["flipped"])
            assert builder.build([by_id[i] for i in shuffled["annotation_order"]], crop, flip) == shuffled[name]
            assert builder.build(annotations, crop, flip, rng=random.Random(shuffled["seed"])) == shuffled[name]
        assert annotations == before


def test_quirks_kept_for_compatibility(expected, builders):
    bbox = builders["objects_bbox"]
    # COCO's crowd flag is the integer 1, and `is True` is false for it: never encoded
    crowd = [a for _, r in records(expected) for a in annotations_of(r) if a.is_group_of == 1]
    assert crowd and all(bbox.object_representation(a) == a.category_no for a in crowd)
    record = expected["validation_extra_iscrowd"][0]
    position = next(i for i, a in enumerate(record["annotations"]) if a["is_group_of"] == 1)
    crowd_object = record["objects_bbox"]["objects"][position]
    assert record["annotations"][position]["category_no"] == crowd_object["representation"] == 133
    # a boolean flag (Open Images) is encoded: category + 171
    assert bbox.object_representation(crowd[0]._replace(is_group_of=True)) == crowd[0].category_no + 171
    # round half to even: a full-width box's centre x is 0.5, 0.5 * 89 = 44.5 -> 44
    full_width = Annotation(area=0.5, image_id=1, bbox=(0.0, 0.25, 1.0, 0.5), category_no=3, category_id="x")
    centres = builders["objects_center_points"].build([full_width])
    assert centres[1] == 44 * 90 + 44
    assert expected["tokenizer_rounding"]["objects_center_points"]["exact_half"] == 76
    # clamping keeps a box's width when it starts left of the image
    left = full_width._replace(bbox=(-0.5, 0.0, 0.8, 1.0))
    assert bbox.inverse_build(bbox.build([left]))[0][0][1][2] == pytest.approx(0.8, abs=1 / 89)


def test_truncation_crop_filter_and_flip(builders):
    bbox = builders["objects_bbox"]
    objects = [Annotation(area=0.01, image_id=1, bbox=(0.01 * i, 0.0, 0.1, 0.1), category_no=i, category_id=str(i))
               for i in range(40)]
    tokens = bbox.build(objects)
    assert len(tokens) == 92 and [tokens[3 * i] for i in range(30)] == list(range(30))   # the first 30
    right_half = bbox.build(objects, crop=(0.5, 0.0, 0.5, 1.0))
    assert set(right_half[:90:3]) == {8191}                                # none overlaps x >= 0.5
    flipped = bbox.inverse_build(bbox.build(objects[:1], crop=(0.0, 0.0, 0.5, 1.0), flip=True))
    assert flipped[0][0][1][0] == pytest.approx(0.9, abs=1 / 89) and flipped[1][0] == pytest.approx(0.5, abs=1 / 89)
    with pytest.raises(ValueError, match="more than no_tokens"):
        BUILDERS["objects_bbox"](600, 30, 8192, True, True, True)          # 600 x 16 flag combinations
    with pytest.raises(ValueError, match="expected 92 tokens"):
        bbox.inverse_build([0] * 91)


def mask_labels(builder, tokens, table, size=256):
    """Where the labels are drawn (with room for any font): glyphs depend on the font and FreeType."""
    mask = np.zeros((size, size), bool)
    objects, _ = builder.inverse_build(tokens)
    for representation, place in objects:
        n = len(table.name(representation % builder.no_object_classes)) + 1
        if builder.name == "objects_bbox":
            x0, y0, *_ = absolute_bbox(place, size, size)
            mask[max(0, y0 + 1):y0 + 21, max(0, x0 + 1):x0 + 3 + 8 * n] = True
        else:
            x, y = int(place[0] * size), int(place[1] * size)
            mask[max(0, y - 18):y + 2, max(0, x - 4 * n - 2):x + 4 * n + 2] = True
    return mask


@pytest.mark.parametrize("name", list(BUILDERS))
def test_plot_draws_the_boxes_points_and_crop_of_the_original(expected, builders, name):
    """Boxes, dots and the crop frame pixel for pixel; the labels' glyphs are masked (font-dependent)."""
    table, record = CategoryTable.coco(), expected["validation"][0]
    picture = builders[name].plot(record[name]["tokens"], table.name, (256, 256))
    reference = np.asarray(Image.open(SCENE / f"plot_{name}.png").convert("RGB"))
    assert picture.shape == reference.shape == (256, 256, 3) and picture.dtype == np.uint8
    mask = mask_labels(builders[name], record[name]["tokens"], table)
    compared = ~mask
    assert compared.mean() > 0.85 and ((reference != 255).any(-1) & compared).sum() > 2000
    assert np.array_equal(picture[compared], reference[compared])
    assert (picture[mask] == 0).all(-1).any()                               # the labels are there


# ----------------------------------------------------------------------------- COCO

@pytest.mark.parametrize("split, groups", [("validation", ("validation", "validation_extra_iscrowd")),
                                           ("train", ("train",))])
def test_coco_loads_as_the_original(expected, split, groups):
    data = load_coco(SCENE / "data", split, **{k: expected["dataset_params"][split][k] for k in
                                               ("min_object_area", "min_objects_per_image", "max_objects_per_image")})
    assert [(c["category_no"], c["category_id"], c["name"], c["supercategory"]) for c in expected["categories"]] == \
           [(i, c.id, c.name, c.super_category) for i, c in enumerate(data.categories.categories)]
    assert data.categories == CategoryTable.coco()                         # what a published model's table is
    rs = [r for g in groups for r in expected[g]]
    assert len(data) == max(r["index"] for r in rs) + 1
    for r in rs:
        n = r["index"]
        info = data.images[n]
        assert (info.id, info.file_name, list(info.size)) == (r["image_id"], r["file_name"], r["original_size_wh"])
        assert data.image_path(n) == SCENE / r["image_path"]
        assert [a._asdict() for a in data.annotations(n)] == [{**a, "bbox": tuple(a["bbox"])}
                                                              for a in r["annotations"]]
        w, h = resized_size(*r["original_size_wh"], 256)
        assert [w, h] == r["resized_size_wh"] and list(centre_crop_box(w, h)) == r["crop_bbox"]
        kept = {a.id for a in data.annotations(n)}
        assert all(d["id"] not in kept for d in r["dropped_by_dataset_filter"])
        assert any("other" in d["reason"] for d in r["dropped_by_dataset_filter"])


def test_the_crop_methods_report_boxes_of_the_pixels_they_cut(expected):
    image = Image.open(SCENE / expected["validation"][0]["image_path"]).convert("RGB")   # 478 x 640
    box, how = crop_box("center", *image.size, 256)
    assert list(box) == expected["validation"][0]["crop_bbox"] and cut(image, how, 256).shape == (256, 256, 3)
    import torch
    generator = torch.Generator().manual_seed(0)
    for method in ("random-1d", "random-2d"):
        for _ in range(5):
            box, how = crop_box(method, *image.size, 256, generator)
            assert cut(image, how, 256).shape == (256, 256, 3)
            assert 0 <= box[0] and box[0] + box[2] <= 1 + 1e-12 and 0 <= box[1] and box[1] + box[3] <= 1 + 1e-12
            if method == "random-1d":   # the original's form: offsets over the resized size
                assert box[2] == 256 / 256 and box[3] == 256 / 342 and (box[1] * 342) == round(box[1] * 342)
            else:                       # a square of the original image
                assert box[2] * 478 == pytest.approx(box[3] * 640) and 256 <= box[2] * 478 <= 478
    assert crop_box("none", *image.size, 256)[0] is None and cut(image, ("squeeze",), 32).shape == (32, 32, 3)
    for r in expected["train_random_crop"]:   # the recorded random-1d boxes have that form too
        w, h = r["resized_size_wh"]
        x0, y0, cw, ch = r["crop_bbox"]
        assert (cw, ch) == (256 / w, 256 / h) and round(x0 * w) * h == round(x0 * w * h) and round(y0 * h) <= h - 256


def copy_coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    for sub in ("annotations", "train2017", "val2017"):
        (root / sub).mkdir(parents=True)
    for f in (SCENE / "data" / "annotations").iterdir():
        (root / "annotations" / f.name).write_bytes(f.read_bytes())
    return root


def edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"instances_val2017.json: annotation 30246: bbox must be 4"),
    (lambda d: d["annotations"][0].update(image_id=5), r"annotation 30246: image_id \[5\] has no image description"),
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), r"file_name must be a plain file name"),
    (lambda d: d["images"][0].update(width=0), r"width and height must be positive"),
    (lambda d: d.pop("categories"), r"instances_val2017.json: no categories"),
    (lambda d: d["annotations"][0].update(iscrowd=True), r"iscrowd must be an integer"),
])
def test_coco_files_that_are_not_the_format_are_refused(tmp_path, change, message):
    root = copy_coco(tmp_path)
    edit(root / "annotations" / "instances_val2017.json", change)
    with pytest.raises(CocoFormatError, match=message):
        load_coco(root, "validation")


def test_coco_layout_and_truncated_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"coco/annotations/instances_val2017.json: not found; a COCO 2017 "
                                                r"folder holds"):
        load_coco(tmp_path / "coco", "validation")
    root = copy_coco(tmp_path)
    path = root / "annotations" / "stuff_val2017.json"
    path.write_bytes(path.read_bytes()[:50000])
    with pytest.raises(CocoFormatError, match=r"stuff_val2017.json: not valid JSON"):
        load_coco(root, "validation")
    # without stuff: only the 80 thing categories, and images need 2 things now
    things = load_coco(SCENE / "data", "validation", use_stuff=False)
    assert len(things.categories) == 80 and all(len(things.annotations(n)) >= 2 for n in range(len(things)))


def test_acquire_packs_only_regular_images_within_the_size_limit(tmp_path):
    from tasks.config.schema import CocoConfig, DataConfig
    from tasks.data.limits import MAX_IMAGE_BYTES
    from tasks.data.objects.source import acquire_objects
    from tasks.runtime.errors import StageError

    root = copy_coco(tmp_path)
    for sub in ("train2017", "val2017"):
        for f in (SCENE / "data" / sub).iterdir():
            (root / sub / f.name).write_bytes(f.read_bytes())
    cfg, raw = DataConfig(source="coco", coco=CocoConfig(root=str(root))), tmp_path / "raw"
    victim = sorted((root / "train2017").iterdir())[0]
    victim.unlink()
    os.mkfifo(victim)      # reading it would block acquire for ever
    with pytest.raises(StageError, match=rf"{victim.name}: is a FIFO, not a regular file"):
        acquire_objects(cfg, raw)
    victim.unlink()
    with open(victim, "wb") as f:   # sparse: declares more than the limit without using the disk
        f.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(StageError, match=rf"{victim.name}: has {MAX_IMAGE_BYTES + 1} bytes, more than the limit"):
        acquire_objects(cfg, raw)
    victim.unlink()        # a missing image is skipped and recorded, the rest packed
    summary = acquire_objects(cfg, raw)
    assert json.loads((raw / "objects" / "missing.json").read_text())["train"] == [victim.name]
    assert summary["train"] == 9 and summary["train_missing_images"] == 1 and summary["validation"] == 22
    sources = json.loads((raw / "sources.json").read_text())   # as every file-based source: name -> its file
    assert len(sources) == 9 + 22 and victim.name.replace(".jpg", ".JPEG") not in sources
    for name, path in sources.items():
        assert Path(path).parent.parent == root and Path(path).stem + ".JPEG" == name


def test_the_json_stream_bounds_what_it_holds(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"info": {"x": 1}, "images": [{"id": i} for i in range(1000)],
                                "annotations": ["y" * 5000]}))
    seen = []
    assert stream_arrays(path, {"images": seen.append}) == {"info", "images", "annotations"}
    assert seen == [{"id": i} for i in range(1000)]     # the unread array is skipped item by item
    with pytest.raises(JSONStreamError, match="a value longer than 1000 characters"):
        stream_arrays(path, {"annotations": seen.append}, max_item_chars=1000)
    path.write_text('{"images": [1, 2]} trailing')
    with pytest.raises(JSONStreamError, match="content after the top-level object"):
        stream_arrays(path, {})


# ----------------------------------------------------------------------------- Open Images

def test_open_images_loads_by_the_originals_rules():
    data = load_open_images(OPEN_IMAGES, "train")
    table = data.categories
    assert len(table) == 340 and table.categories[-1].id == "/m/01s55n"     # Suitcase moved last
    assert table == CategoryTable.open_images()                              # the published models' table
    ids = [c.id for c in table.categories[:-1]]
    assert ids == sorted(ids)
    lines = (OPEN_IMAGES / "oidv6-train-annotations-bbox.csv").read_text().splitlines()[1:]
    first_seen = list(dict.fromkeys(line.split(",")[0] for line in lines))
    assert [i.id for i in data.images] == first_seen and len(data) == 8
    assert data.image_path(0) == OPEN_IMAGES / "train" / f"{first_seen[0]}.jpg"
    for n in range(len(data)):
        for a in data.annotations(n):
            row = lines[a.id].split(",")                                     # id: the row's index
            assert a.image_id == row[0] and a.source == row[1] and a.confidence == float(row[3])
            assert a.bbox == (float(row[4]), float(row[6]), float(row[5]) - float(row[4]), float(row[7]) - float(row[6]))
            assert a.area == a.bbox[2] * a.bbox[3] > 0.0001
            # flags are bool(int(...)): the -1 ("unknown") of activemil rows reads as True
            assert a.is_group_of is bool(int(row[10])) and a.is_occluded is bool(int(row[8]))
            # Woman, Man, Boy, Girl are Person (open_images_unify_categories_for_coco)
            assert a.category_id == {"/m/03bt1vf": "/m/01g317", "/m/04yx4": "/m/01g317", "/m/05r655": "/m/01g317",
                                     "/m/01bl7v": "/m/01g317"}.get(row[2], row[2]) or row[2] not in ids
    unknown = [a for n in range(len(data)) for a in data.annotations(n) if lines[a.id].split(",")[8:13] == ["-1"] * 5]
    assert unknown and all(a.is_group_of and a.is_occluded and a.is_depiction and a.is_inside for a in unknown)
    builder = BUILDERS["objects_bbox"](len(table), 30, 8192, True, True, True)
    assert builder.object_representation(unknown[0]) == unknown[0].category_no + 340 * 15


def test_open_images_area_and_count_filters():
    everything = load_open_images(OPEN_IMAGES, "validation", min_object_area=0.0, min_objects_per_image=0,
                                  max_objects_per_image=1000, category_allow_list=None, category_mapping=None)
    assert len(everything.categories) == 601 and len(everything) == 8
    counts = [len(everything.annotations(n)) for n in range(len(everything))]
    few = load_open_images(OPEN_IMAGES, "validation", min_object_area=0.0, max_objects_per_image=10,
                           category_allow_list=None, category_mapping=None)
    assert len(few) == sum(2 <= c <= 10 for c in counts) < 8
    # an image's place comes from its first box with area >= min; a box of exactly min area is not an object
    smallest = min(a.area for n in range(len(everything)) for a in everything.annotations(n))
    strict = load_open_images(OPEN_IMAGES, "validation", min_object_area=smallest, min_objects_per_image=0,
                              category_allow_list=None, category_mapping=None)
    assert sum(len(strict.annotations(n)) for n in range(len(strict))) == sum(counts) - 1


@pytest.mark.parametrize("change, message", [
    (lambda lines: [lines[0].replace("XMax", "XMAX")] + lines[1:], r"no column\(s\) XMax"),
    (lambda lines: lines[:1] + [lines[1].replace(",1,0.", ",1,zero", 1)] + lines[2:], r"bbox.csv:2: could not convert"),
    (lambda lines: lines[:1] + ["../../x" + lines[1][lines[1].index(","):]] + lines[2:], r"is not a plain id"),
    (lambda lines: lines[:1] + [lines[1].rsplit(",", 3)[0]] + lines[2:], r"bbox.csv:2: expected 13 values"),
])
def test_open_images_files_that_are_not_the_format_are_refused(tmp_path, change, message):
    root = tmp_path / "oi"
    root.mkdir()
    for f in OPEN_IMAGES.iterdir():
        if f.is_file():
            (root / f.name).write_bytes(f.read_bytes())
    (root / "validation").mkdir()
    path = root / "validation-annotations-bbox.csv"
    path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    with pytest.raises(OpenImagesFormatError, match=message):
        load_open_images(root, "validation")
    (root / "validation").rmdir()
    with pytest.raises(FileNotFoundError, match=r"oi/validation: not found; an Open Images folder holds"):
        load_open_images(root, "validation")


# ----------------------------------------------------------------------------- published configs

def test_the_published_configs_define_the_conditioning():
    """The original's scene configs, as their published folders' project YAML carries them."""
    coco = SceneConditioning.of_project({"model": {"params": {"cond_stage_key": "objects_bbox"}}, "data": {
        "params": {"validation": {"target": "taming.data.annotated_objects_coco.AnnotatedObjectsCoco", "params": {
            "no_tokens": 8192, "max_objects_per_image": 30, "use_group_parameter": True, "encode_crop": True}}}}})
    assert (coco.n_classes, coco.make().embedding_dim, coco.make().none) == (171, 92, 8191)
    oi = SceneConditioning.of_project({"model": {"params": {"cond_stage_key": "objects_center_points"}}, "data": {
        "params": {"train": {"target": "taming.data.annotated_objects_open_images.AnnotatedObjectsOpenImages",
                             "params": {"no_tokens": 8192, "max_objects_per_image": 30, "use_group_parameter": True,
                                        "use_additional_parameters": True, "encode_crop": True,
                                        "category_allow_list_target":
                                            "taming.data.open_images_helper.top_300_classes_plus_coco_compatibility",
                                        "category_mapping_target":
                                            "taming.data.open_images_helper.open_images_unify_categories_for_coco"}}}}})
    assert (oi.n_classes, oi.make().embedding_dim) == (340, 62)
    assert SceneConditioning.from_json(json.loads(json.dumps(oi.to_json()))) == oi
    with pytest.raises(ValueError, match="names no annotated-objects dataset"):
        SceneConditioning.of_project({"model": {"params": {"cond_stage_key": "objects_bbox"}}})
