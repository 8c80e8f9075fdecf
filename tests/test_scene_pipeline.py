"""Scene synthesis through the pipeline at smoke size, from a fresh copy of the repository:
a scene dataset in the original's layout (COCO: the reference set's folder; Open Images: a
trimmed copy of real files) is acquired, extracted, its boxes placed (annotate@objects),
tokenized through the conditional builder, a transformer trained and sampled (at twice the
training size: sliding window with per-window sequences), and the trained folder sampled
from boxes with `taming sample-model`."""
import copy
import json
import re

import pytest
import yaml
from fixtures_pipeline import REPO_ROOT, make_smoke_repo, run_dvc

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
    params["sample"] = {**params["sample"], "resolution": 32}
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
])
def test_the_scene_route_is_checked_before_any_work(change, message):
    params = with_scenes(SMOKE)
    change(params)
    with pytest.raises(ConfigError, match=message):
        from_dict(params)
