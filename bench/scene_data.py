"""Loading COCO's annotation files: streamed (tasks/data/objects/coco.py) vs the original's
``json.load`` of both files (taming/data/annotated_objects_coco.py, transcribed), side by side:
peak memory (RSS of a fresh process) and CPU time, on a synthetic COCO split whose
annotations carry polygons like the real ones (stuff_train2017.json is 1.1 GB).

    .venv/bin/python bench/scene_data.py [--images 5000] [--objects 12] [--points 60]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The original's loading, transcribed (json.load, Annotation tuples in a dict of lists, the filter).
ORIGINAL = """
import json, sys
from collections import defaultdict
from itertools import chain
from tasks.data.objects.annotations import Annotation
root = sys.argv[1]
inst = json.load(open(root + "/annotations/instances_val2017.json"))
stuff = json.load(open(root + "/annotations/stuff_val2017.json"))
categories = {str(c["id"]): c["name"] for c in chain(inst["categories"], stuff["categories"]) if c["name"] != "other"}
number = {c: i for i, c in enumerate(sorted(categories))}
images = {str(i["id"]): (i["width"], i["height"]) for i in inst["images"]}
annotations = defaultdict(list)
for ann in chain(inst["annotations"], stuff["annotations"]):
    w, h = images[str(ann["image_id"])]
    if str(ann["category_id"]) not in number:
        continue
    bbox = (ann["bbox"][0] / w, ann["bbox"][1] / h, ann["bbox"][2] / w, ann["bbox"][3] / h)
    annotations[str(ann["image_id"])].append(Annotation(area=bbox[2] * bbox[3], image_id=ann["image_id"], bbox=bbox,
        category_no=number[str(ann["category_id"])], category_id=str(ann["category_id"]), id=ann["id"],
        is_group_of=ann["iscrowd"]))
kept = {k: [a for a in v if a.area > 1e-5] for k, v in annotations.items()}
kept = {k: v for k, v in kept.items() if 2 <= len(v) <= 30}
print(len(kept), sum(map(len, kept.values())))
"""
STREAMED = """
import sys
from tasks.data.objects.coco import load_coco
data = load_coco(sys.argv[1], "validation")
print(len(data), data.stats["annotations"])
"""


def make_coco(root: Path, images: int, objects: int, points: int) -> int:
    """A COCO val split of ``images`` images with ``objects`` things and as many stuff regions each."""
    rng = random.Random(0)
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    infos = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480, "license": 1,
              "coco_url": "http://images.cocodataset.org/val2017/x.jpg"} for i in range(images)]

    def annotation(k: int, image: int, category: int) -> dict:
        x, y = rng.uniform(0, 500), rng.uniform(0, 380)
        return {"segmentation": [[round(rng.uniform(0, 640), 2) for _ in range(2 * points)]],
                "area": 1000.0, "iscrowd": 0, "image_id": image, "bbox": [x, y, rng.uniform(5, 140), rng.uniform(5, 100)],
                "category_id": category, "id": k}

    things = [{"id": i, "name": f"thing{i}", "supercategory": "t"} for i in range(1, 91)]
    stuff = [{"id": i, "name": f"stuff{i}", "supercategory": "s"} for i in range(92, 183)] + \
        [{"id": 183, "name": "other", "supercategory": "other"}]
    size = 0
    for name, categories, offset in (("instances", things, 0), ("stuff", stuff, 10 ** 7)):
        path = root / "annotations" / f"{name}_val2017.json"
        with open(path, "w") as f:   # written item by item: the generator must not need the memory measured
            f.write('{"info": {}, "images": ' + json.dumps(infos) + ', "annotations": [')
            for k in range(images * objects):
                f.write(("," if k else "") + json.dumps(annotation(offset + k, k // objects,
                                                                   rng.choice(categories)["id"])))
            f.write('], "categories": ' + json.dumps(categories) + "}")
        size += path.stat().st_size
    return size


def measure(code: str, root: Path) -> tuple[float, float, str]:
    """(peak RSS MB, CPU s, output) of the code in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", "import resource, sys\n" + code +
                          "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)", str(root)],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout.split("\n")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return int(out[-2]) / 1024, cpu, out[-3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--objects", type=int, default=12, help="things per image (as many stuff regions)")
    parser.add_argument("--points", type=int, default=60, help="polygon points per annotation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        size = make_coco(Path(tmp), args.images, args.objects, args.points)
        print(f"synthetic COCO split: {args.images} images, {2 * args.images * args.objects} annotations, "
              f"{size / 2 ** 20:.0f} MB of JSON ({time.perf_counter() - start:.0f} s to write)")
        streamed, original = measure(STREAMED, Path(tmp)), measure(ORIGINAL, Path(tmp))
    assert streamed[2] == original[2], (streamed[2], original[2])   # the same images and annotations
    print(f"{'':24} {'peak RSS MB':>12} {'CPU s':>8}   (images, annotations)")
    for name, (rss, cpu, out) in (("streamed (ours)", streamed), ("json.load (original)", original)):
        print(f"{name:24} {rss:12.0f} {cpu:8.1f}   ({out})")
    print(f"peak memory: {original[0] / streamed[0]:.1f}x less streamed; CPU: {streamed[1] / original[1]:.2f}x")


if __name__ == "__main__":
    main()
