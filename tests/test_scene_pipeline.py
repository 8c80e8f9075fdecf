"""Scene synthesis through the pipeline at smoke size, from a fresh copy of the repository:
a scene dataset in the original's layout (COCO: the reference set's folder; Open Images: a
trimmed copy of real files) is acquired, extracted, its boxes placed (annotate@objects),
tokenized through the conditional builder, a transformer trained and sampled (at twice the
training size: sliding window with per-window sequences), and the trained folder sampled
from boxes with `taming sample-model`."""
import copy
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_pipeline import REPO_ROOT, make_smoke_repo, pipeline_env, run_dvc
from processes import run_bounded

from tasks.config.params import from_dict
from tasks.config.typed import ConfigError

RAN = re.compile(r"Running stage '([^']+)'")
ROOTS = {"coco": "tests/reference/scene_coco/data", "open_images": "tests/data/open_images"}


def with_scenes(params: dict, source: str = "coco") -> dict:
    """Smoke params switched to scene synthesis on ``source`` (conditioning objects)."""
    params = copy.deepcopy(params)
    params["conditioning"] = "objects"
    params["data"] = {"source": source, source: {"root": ROOTS[source]}}
    params["annotate"] = {"objects": {"model": "dataset"}}
    params["vqgan"] = {"image": params["vqgan"]["image"]}
    objects = {"builder": "objects_bbox", "no_tokens": 1100}   # a 33 x 33 coordinate grid
    if source == "open_images":   # 340 classes x 16 flag combinations need the paper's 8192 tokens
        objects = {"builder": "objects_center_points", "no_tokens": 8192, "use_additional_parameters": True,
                   "random_crop": "random-2d"}
    params["tokenize"] = {**params["tokenize"], "extra_crops": 1, "objects": objects}
    params["sample"] = {**params["sample"], "resolution": 32, "large_resolution": 48}
    params["evaluate"] = {**params["evaluate"], "resolution": 32}
    return params


COMMON = {"acquire", "extract", "annotate@objects", "train-vqgan@image", "tokenize", "train-transformer", "sample",
          "fid-reference", "evaluate", "evaluate-vqgan"}
SMOKE = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())


@pytest.mark.parametrize("change, message", [
    (lambda p: p["data"].update(source="demo"), r"conditioning: objects reads the boxes of a scene dataset; data.source "
                                                r"is demo, use coco or open_images"),
    (lambda p: p["tokenize"].pop("objects"), r"tokenize.objects: conditioning objects needs the conditional builder"),
    (lambda p: p["tokenize"]["objects"].update(no_tokens=1024), r"1024 is a square: the bottom-right corner's token"),
    (lambda p: p["annotate"].clear(), r"add annotate.objects"),
    (lambda p: p["vqgan"].update(depth=p["vqgan"]["image"]), r"vqgan.depth: nothing reads it"),
    (lambda p: p["data"]["coco"].update(root=""), r"data.coco.root: required"),
    (lambda p: p["data"]["coco"].update(min_objects_per_image=40), r"data.coco.min_objects_per_image: must be in"),
    (lambda p: p.update(conditioning="class", annotate={}), r"tokenize.objects: only read with conditioning objects"),
    (lambda p: p["tokenize"].update(rescale=32), r"tokenize.rescale: not read with conditioning objects"),
    (lambda p: p.update(source_maps={"segmentation": {}}), r"source_maps.segmentation: data.source coco ships no maps"),
])
def test_the_scene_route_is_checked_before_any_work(change, message):
    params = with_scenes(SMOKE)
    change(params)
    with pytest.raises(ConfigError, match=message):
        from_dict(params)


def triples(tokens: list[int], n: int) -> list[tuple]:
    """The objects of a sequence, as an order-free list (tokenize shuffles them)."""
    return sorted(tuple(tokens[i:i + n]) for i in range(0, len(tokens) - 2, n))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_coco_scene_pipeline_trains_and_samples_from_a_fresh_clone(tmp_path):
    import pyarrow.parquet as pq
    from PIL import Image

    from tasks.config.schema import ObjectsTokensConfig
    from tasks.data.layout import Layout
    from tasks.data.objects.coco import load_coco
    from tasks.data.objects.crops import crop_box
    from tasks.data.objects.dataset import read_categories
    from tasks.data.objects.records import record_annotations
    from tasks.data.token_store import TokenDataset
    from tasks.tokenize_images import scene_conditioning

    repo = make_smoke_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(with_scenes(yaml.safe_load((repo / "params.yaml").read_text())),
                                                     sort_keys=False))
    out = run_dvc(repo, "repro").stdout
    assert set(RAN.findall(out)) == COMMON
    assert json.loads(run_dvc(repo, "status", "--json").stdout) == {}

    # acquire + extract: the images the original's dataset holds (10 train, 22 validation), in pseudo-synsets
    coco = {split: load_coco(REPO_ROOT / ROOTS["coco"], split) for split in ("train", "validation")}
    for split, data in coco.items():
        listed = (repo / "data/dataset/image" / split / "filelist.txt").read_text().split()
        assert listed == sorted(f"coco-0000/{i.file_name[:-4]}.JPEG" for i in data.images)
    # annotate@objects: one record per image, the dataset's annotations bit for bit
    layout = Layout(repo / "data")
    table, info = read_categories(layout.objects)
    assert table == coco["train"].categories and info["settings"]["max_objects_per_image"] == 30
    for n in range(len(coco["validation"])):
        image = coco["validation"].images[n]
        record = json.loads((layout.objects / "validation/coco-0000" / f"{image.file_name[:-4]}.json").read_text())
        assert record_annotations(record, int(image.id)) == coco["validation"].annotations(n)

    # tokenize: each row's sequence is the builder's for its crop and flip (objects in a seeded order)
    scene = scene_conditioning(ObjectsTokensConfig(builder="objects_bbox", no_tokens=1100), layout)
    builder = scene.make()
    train = TokenDataset(layout.tokens / "train")
    assert (train.meta.cond.kind, train.meta.cond.vocab_size, train.meta.cond.grid) == ("objects_bbox", 1100, (1, 92))
    assert len(train) == 30 and sorted(set(train.aug.tolist())) == [0, 1, 2]
    by_id = {f"coco-0000/{i.file_name[:-4]}.JPEG": (i, coco["train"].annotations(n))
             for n, i in enumerate(coco["train"].images)}
    orders = set()
    for k in range(len(train)):
        image, annotations = by_id[train.ids[k]]
        tokens = train.cond_tokens[k].tolist()
        if train.aug[k] < 2:
            box = crop_box("center", *image.size, 16)[0]
            want = builder.build(annotations, box, flip=bool(train.aug[k]))
            assert tokens[-2:] == want[-2:] and triples(tokens, 3) == triples(want, 3)
            orders.add(tuple(tokens[:-2]) == tuple(want[:-2]))
        else:   # a random-1d crop: 16 px of the resized image
            x0, y0, w, h = builder.inverse_build(tokens)[1]
            assert max(w, h) == pytest.approx(1.0, abs=1 / 32) and 0 <= x0 and x0 + w <= 1 + 1 / 32
    assert False in orders                                            # shuffled, as the original's training
    assert pq.read_schema(layout.tokens / "validation" / "part-00000.parquet").field("cond_tokens").type.list_size == 92

    # train-transformer: the published layout's config, plus what sampling needs to build sequences
    project = yaml.safe_load((repo / "data/transformer/configs/transformer-project.yaml").read_text())
    params = project["model"]["params"]
    assert params["cond_stage_key"] == "objects_bbox"
    assert params["cond_stage_config"] == {"target": "taming.models.dummy_cond_stage.DummyCondStage",
                                           "params": {"conditional_key": "objects_bbox"}}
    assert params["transformer_config"]["params"]["vocab_size"] == 1100
    assert params["transformer_config"]["params"]["block_size"] == 92 + 16
    assert project["objects"]["no_tokens"] == 1100 and len(project["objects"]["categories"]) == 171

    # sample: validation layouts at twice the training size (sliding window), the drawing first in the grid
    samples = json.loads((repo / "data/samples/samples.json").read_text())
    assert samples["conditioning"] == "objects_bbox" and samples["sliding_window"] and samples["resolution"] == 32
    large = samples["large"]     # sample.large_resolution: validation boxes too, below the grid's rows
    assert large["resolution"] == 48 and all(Image.open(repo / "data/samples" / f).size == (48, 48)
                                             for f in large["images"])
    assert all(Image.open(repo / "data/samples" / i["file"]).size == (32, 32) for i in samples["images"])
    assert json.loads((repo / "metrics/samples.json").read_text())["num_samples"] == 4

    # the trained folder samples dataset boxes (its records) and a layout file, beside their drawings
    records = sorted((layout.objects / "validation/coco-0000").glob("*.json"))[:2]
    layout_file = tmp_path / "two.yaml"
    layout_file.write_text(yaml.safe_dump({"name": "two", "objects": [{"label": "dog", "bbox": [0.1, 0.1, 0.5, 0.5]},
                                                                      {"label": "grass", "bbox": [0, 0.6, 1, 0.4]}]}))
    from tasks.cli import main as taming
    assert taming(["sample-model", str(repo / "data/transformer"), "--boxes", str(layout_file), *map(str, records),
                   "-n", "1", "--resolution", "16", "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    for name in ("two", *(r.stem for r in records)):
        assert sorted(p.name for p in (tmp_path / "out" / name).iterdir()) == ["000000.png", "boxes.png"]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_open_images_is_acquired_and_tokenized_with_its_flags(tmp_path):
    from tasks.data.layout import Layout
    from tasks.data.objects.open_images import load_open_images
    from tasks.data.token_store import TokenDataset

    repo = make_smoke_repo(tmp_path / "repo")
    params = with_scenes(yaml.safe_load((repo / "params.yaml").read_text()), "open_images")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_dvc(repo, "repro", "tokenize").stdout
    assert set(RAN.findall(out)) == {"acquire", "extract", "annotate@objects", "train-vqgan@image", "tokenize"}
    layout = Layout(repo / "data")
    data = load_open_images(REPO_ROOT / ROOTS["open_images"], "validation")
    listed = (layout.images / "validation" / "filelist.txt").read_text().split()
    assert listed == sorted(f"open_images-0000/{i.id}.JPEG" for i in data.images)
    tokens = TokenDataset(layout.tokens / "validation")
    meta = tokens.meta.cond
    assert (meta.kind, meta.vocab_size, meta.grid, meta.builder["no_object_classes"]) == \
           ("objects_center_points", 8192, (1, 62), None)
    assert len(meta.builder["categories"]) == 340 and meta.builder["use_additional_parameters"]
    # representations carry the flags: category + 340 x (group, occluded, depiction, inside bits)
    flagged = [t for row in tokens.cond_tokens.tolist() for t in row[:60:2] if 340 <= t < 8191]
    assert flagged
    # a rerun re-makes exactly the parts whose inputs changed: an object record (in each part's
    # file signature), the extra crops' method (in the row settings)
    record = layout.record_file("validation", listed[-1])
    os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 10**9))
    n_parts = -(-len(listed) // params["tokenize"]["rows_per_part"])
    assert f"in {n_parts} part(s); wrote 1 part(s)" in taming(repo, "tokenize", "--split", "validation")
    params["tokenize"]["objects"]["random_crop"] = "random-1d"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    n_train = len((layout.images / "train" / "filelist.txt").read_text().split())
    n_parts = -(-n_train // params["tokenize"]["rows_per_part"])
    assert f"in {n_parts} part(s); wrote {n_parts} part(s)" in taming(repo, "tokenize", "--split", "train")


def taming(repo, *args: str) -> str:
    proc = run_bounded([str(Path(sys.executable).parent / "taming"), *args], cwd=repo, env=pipeline_env(), cpu_s=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
