"""Data throughput: demo generation and safe extraction, side by side with their baselines.

1. generation: rendering alone vs. the whole ``acquire`` (render + JPEG + ground-truth PNGs + tars);
2. extraction: our ``extract`` (safety checks, every image decoded, per-synset resume) vs. the
   original project's plain ``tarfile.extractall`` of the outer and inner tars (no checks),
   on the demo archives and on ImageNet-sized (500x375) JPEGs.

    .venv/bin/python bench/data.py [--resolution 64] [--per-class 100] [--workers 2]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

from tasks import acquire, extract
from tasks.config.schema import DemoConfig, ExtractConfig
from tasks.data import scenes
from tasks.data.archives import tar_bytes, write_tar
from tasks.data.layout import TRAIN_TAR, VAL_SYNSETS, VAL_TAR


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the render workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds): on a shared machine the CPU figure is the steadier one."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def rate(n: int, t: tuple[float, float]) -> str:
    return f"{n / t[0]:6.0f} images/s ({n / t[1]:5.0f} per CPU-second)"


def extractall_baseline(raw: Path, out: Path) -> None:
    """What the original taming repo does: trust the archive, extract everything, no checks."""
    with tarfile.open(raw / TRAIN_TAR) as outer:
        outer.extractall(out, filter="fully_trusted")
    for sub in sorted(out.glob("*.tar")):
        with tarfile.open(sub) as inner:
            inner.extractall(out / sub.stem, filter="fully_trusted")
    with tarfile.open(raw / VAL_TAR) as val:
        val.extractall(out / "val", filter="fully_trusted")


def imagenet_sized(raw: Path, classes: int, per_class: int) -> int:
    """Demo scenes upscaled to 500x375 and saved as JPEG at quality 90, in the ILSVRC layout."""
    def jpeg(kind: int, i: int) -> bytes:
        image = scenes.render(scenes.scene_for(0, 0, kind, i), 64).image
        buf = io.BytesIO()
        Image.fromarray(image).resize((500, 375), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    kinds = scenes.KINDS[:classes]
    write_tar(raw / TRAIN_TAR, [(f"{k.synset}.tar", tar_bytes((f"{k.synset}_{i}.JPEG", jpeg(n, i))
                                                                      for i in range(per_class)))
                                        for n, k in enumerate(kinds)])
    write_tar(raw / VAL_TAR, [("ILSVRC2012_val_00000001.JPEG", jpeg(0, per_class))])
    (raw / VAL_SYNSETS).write_text(f"ILSVRC2012_val_00000001.JPEG {kinds[0].synset}\n")
    (raw / "synsets.json").write_text(
        json.dumps({k.synset: {"index": n, "human": k.name} for n, k in enumerate(kinds)}))
    return classes * per_class + 1


def compare_extraction(label: str, raw: Path, work: Path, n: int, workers: int) -> None:
    ours = timed(lambda: extract.run(ExtractConfig(), raw, work / f"{label}-ours", work / f"{label}.json",
                                     workers))
    base = timed(lambda: extractall_baseline(raw, work / f"{label}-extractall"))
    print(f"extract ({label}, {n} images): safe + verified ({workers} workers) {rate(n, ours)}   plain extractall {rate(n, base)}"
          f"   CPU time ours/baseline {ours[1] / base[1]:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class (10 classes)")
    parser.add_argument("--imagenet-per-class", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for acquire and extract")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = DemoConfig(resolution=args.resolution, n_train=args.per_class, n_val=args.per_class // 5)
        n = demo.classes * (demo.n_train + demo.n_val)
        render = timed(lambda: [scenes.render(scenes.scene_for(0, 0, i % 10, i), args.resolution)
                                for i in range(500)])
        full = timed(lambda: acquire.acquire_demo(demo, work / "raw", args.workers))
        print(f"generation ({args.resolution}px): render only {rate(500, render)}   full acquire of {n} images "
              f"with {args.workers} workers {rate(n, full)}, {full[0]:.1f} s")
        compare_extraction(f"demo {args.resolution}px", work / "raw", work, n, args.workers)
        n = imagenet_sized(work / "raw500", 10, args.imagenet_per_class)
        compare_extraction("500x375 JPEG", work / "raw500", work, n, args.workers)


if __name__ == "__main__":
    main()
