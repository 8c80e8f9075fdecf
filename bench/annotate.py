"""Annotation throughput on the CPU: the stage's batched loop vs one image per forward.

The original taming scripts ran MiDaS / DeepLab with batch size 1, decoding each image
in the loop. This runs the depth/segment stage's own loop (tasks/annotate.py) on the
same rendered JPEGs both ways -- ``batch_size=1, num_workers=0`` (the original's way)
and ``--batch-size`` with decoding workers -- and prints images/s and the ratio
(target >= 2x). Weights are random (speed does not depend on them).

    python bench/annotate.py [--model midas_v21_small|midas_v21|deeplabv2_cocostuff]
                             [--images 16] [--size 96x128] [--batch-size 8] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tasks import depth, segment  # noqa: E402
from tasks.config.schema import DepthConfig, SegmentConfig  # noqa: E402
from tasks.data import annotation as annotate  # noqa: E402
from tasks.data import scenes  # noqa: E402


def make_images(data: Path, n: int, height: int, width: int) -> None:
    """n rendered scenes, centre-cropped to height x width, as the extract stage lays them out."""
    rels = []
    for i in range(n):
        kind = i % len(scenes.KINDS)
        r = scenes.render(scenes.scene_for(0, 0, kind, i), max(height, width)).image
        top, left = (r.shape[0] - height) // 2, (r.shape[1] - width) // 2
        rel = f"{scenes.KINDS[kind].synset}/bench_{i}.JPEG"
        path = data / "dataset" / "image" / "validation" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(r[top:top + height, left:left + width])).save(path, quality=90)
        rels.append(rel)
    (data / "dataset" / "image" / "validation" / "filelist.txt").write_text("".join(f"{r}\n" for r in sorted(rels)))


def images_per_second(cfg, annotator, n: int) -> float:
    shutil.rmtree(cfg.data_dir / annotator.kind, ignore_errors=True)  # start with nothing done
    start = time.perf_counter()
    annotate.annotate(cfg, annotator)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="midas_v21_small", choices=["midas_v21_small", "midas_v21", "deeplabv2_cocostuff"])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", default="96x128", help="HxW of the images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    height, width = map(int, args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_images(data, args.images, height, width)
        if args.model == "deeplabv2_cocostuff":
            from models.deeplab import deeplabv2_cocostuff as build
            stage, cls = segment, SegmentConfig
        else:
            from models.midas import ARCHITECTURES
            build, stage, cls = ARCHITECTURES[args.model], depth, DepthConfig
        weights = Path(tmp) / "random.pt"
        torch.save(build().state_dict(), weights)

        base = dict(model=args.model, weights=weights, data_dir=data, splits=["validation"], device="cpu")
        annotator = stage.annotator(cls(**base))
        warm = cls(**{**base, "data_dir": Path(tmp) / "warmup"}, batch_size=2, num_workers=0)
        make_images(warm.data_dir, 2, height, width)
        annotate.annotate(warm, annotator)

        results = {}
        for label, batch_size, workers in [("one image per forward", 1, 0),
                                           (f"batched ({args.batch_size}, {args.workers} workers)",
                                            args.batch_size, args.workers)]:
            cfg = cls(**base, batch_size=batch_size, num_workers=workers)
            results[label] = images_per_second(cfg, annotator, args.images)

    print(f"\n{args.model} on CPU ({args.threads} threads), {args.images} images {height}x{width}")
    for label, ips in results.items():
        print(f"  {label:<32} {ips:8.2f} images/s")
    one, batched = results.values()
    print(f"  ratio batched / one-by-one: {batched / one:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
