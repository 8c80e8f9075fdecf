"""Memory of a one-class source through acquire and extract (FFHQ, COCO, a folder of photos are
one class: one synset tar of up to 89 GB), side by side with packing that class in memory.

A folder source of N and of 10 N noise PNGs (incompressible, ~0.8 MB each) goes through
``acquire`` (the streaming tar-of-tars writer) and ``extract`` (each synset tar read in
place), each in its own process; the baseline packs the same class the way a tar-of-tars
is built in memory (``tar_bytes``, what acquire did for custom lists before). Peak RSS
of each process and the 10 N / N ratios are printed: ours stays flat, the baseline grows
with the class.

    .venv/bin/python bench/sources.py [--images 40] [--side 512]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

STEPS = {
    "acquire (streamed)": """
from tasks import acquire
from tasks.config.schema import DataConfig, FolderConfig
acquire.run(DataConfig(source="folder", folder=FolderConfig(ROOT, validation_fraction=0.05)), WORK + "/raw")
""",
    "extract (in place)": """
from tasks import extract
from tasks.config.schema import ExtractConfig
extract.run(ExtractConfig(), WORK + "/raw", WORK + "/images", WORK + "/extract.json")
""",
    "baseline: class tar in memory": """
from pathlib import Path
from tasks.data.archives import tar_bytes, write_tar
photos = sorted(Path(ROOT).rglob("*.png"))
write_tar(WORK + "/baseline.tar", [("photos.tar", tar_bytes((p.name, p.read_bytes()) for p in photos))])
""",
}


def peak_rss_mb(code: str, root: Path, work: Path) -> float:
    """Run ``code`` in a fresh interpreter; its peak resident set in MB."""
    script = f"ROOT, WORK = {str(root)!r}, {str(work)!r}\n{code}\nimport resource\n" \
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1]) / 1024


def noise_photos(root: Path, n: int, side: int) -> float:
    """n incompressible PNGs under root; their total size in MB."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / f"{i:06d}.png",
                                                                                   compress_level=1)
    return sum(p.stat().st_size for p in root.iterdir()) / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40, help="N: photos of the small class (the large has 10 N)")
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.images, 10 * args.images):
            work = Path(tmp) / str(n)
            size = noise_photos(work / "photos", n, args.side)
            peaks[n] = {step: peak_rss_mb(code, work / "photos", work) for step, code in STEPS.items()}
            print(f"{n} photos ({size:.0f} MB): " + ", ".join(f"{s} {mb:.0f} MB" for s, mb in peaks[n].items()))
    small, large = peaks[args.images], peaks[10 * args.images]
    print("peak RSS, 10x the photos / N: " + ", ".join(f"{s} {large[s] / small[s]:.2f}x" for s in STEPS))


if __name__ == "__main__":
    main()
