"""Stage `sample`: draw images from the trained transformer, with the KV cache.

Conditionings come from the validation split: for D-RIN a validation image's
depth map (encoded by the transformer's depth VQGAN), for a segmentation model
its label map, for a class-conditional model its class label; an
unconditional model needs none. Each conditioning gets ``per_condition``
samples, drawn with the top-level ``top_k`` / ``top_p`` / ``temperature``
(the only stage that reads them, so ``dvc exp run -S top_k=250`` reruns just
``sample`` and ``evaluate``). A ``resolution`` above the training size samples
the larger latent grid with a sliding window, as the paper's
high-resolution results.

Writes ``data/samples/images/NNNNN.png`` (what ``evaluate`` scores),
``data/samples/samples.json`` (which conditioning each image comes from, and
the settings), and ``data/samples/grid.png``: one row per conditioning, the
conditioning rendered as an image, the real validation image, then its samples.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.config import build, check, load_params

SAMPLING_KEYS = ("top_k", "top_p", "temperature")


@dataclass
class SamplingParams:
    """The top-level keys of params.yaml that users sweep."""
    top_k: int | None = None          # keep the k most likely tokens (null: all)
    top_p: float | None = None        # keep the smallest set holding this much mass (null: all)
    temperature: float = 1.0

    def __post_init__(self):
        check(self.top_k is None or self.top_k >= 1, "top_k", f"must be >= 1 or null, got {self.top_k}")
        check(self.top_p is None or 0 < self.top_p <= 1, "top_p", f"must be in (0, 1] or null, got {self.top_p}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")


@dataclass
class SampleConfig:
    """params.yaml section ``sample``."""
    conditions: int = 16               # validation conditionings to sample for
    per_condition: int = 4             # samples per conditioning
    batch_size: int = 16
    classes: list[int] | None = None   # only conditionings of these class labels (null: any)
    seed: int = 0
    resolution: int | None = None      # output side in px (null: the training size; larger: sliding window)
    grid_conditions: int = 8           # rows of grid.png

    def __post_init__(self):
        for key in ("conditions", "per_condition", "batch_size", "grid_conditions"):
            check(getattr(self, key) >= 1, f"sample.{key}", "must be >= 1")
        check(self.classes is None or (len(self.classes) > 0 and min(self.classes) >= 0),
              "sample.classes", "must be a non-empty list of class labels >= 0, or null")
        check(self.resolution is None or self.resolution >= 8, "sample.resolution", "must be >= 8 or null")


def load_config(params: str | Path = "params.yaml", overrides=()) -> tuple[SampleConfig, SamplingParams]:
    data = load_params(params, overrides)
    sampling = build(SamplingParams, {k: data[k] for k in SAMPLING_KEYS if k in data})
    return build(SampleConfig, data.get("sample") or {}, "sample"), sampling


# ---- the model ----------------------------------------------------------------------

def training_geometry(transformer_dir: str | Path) -> tuple[int, int]:
    """(training image side in px, downsampling factor f) of a transformer run's image VQGAN."""
    from models.pretrained import locate, read_config

    ddconfig = read_config(locate(transformer_dir)[1])["params"]["first_stage_config"]["params"]["ddconfig"]
    return int(ddconfig["resolution"]), 2 ** (len(ddconfig["ch_mult"]) - 1)


def conditioning_kind(model) -> str:
    """none | depth | segmentation | class_label: what the transformer is conditioned on."""
    return "none" if model.be_unconditional else model.cond_stage_key


# ---- conditionings from the validation split ---------------------------------------------

def pick_conditions(dataset, n: int, classes: list[int] | None) -> list[int]:
    """``n`` dataset indices spread evenly over the split (file lists are sorted by
    class, so the first n would all be one class), restricted to ``classes``."""
    candidates = [i for i, c in enumerate(dataset.class_labels) if classes is None or c in classes]
    if not candidates:
        raise ValueError(f"sample.classes {classes}: no validation image has these class labels "
                         f"(labels present: {sorted(set(dataset.class_labels))})")
    if n >= len(candidates):
        return candidates
    step = len(candidates) / n
    return [candidates[int(k * step)] for k in range(n)]


def render_condition(item: dict, kind: str):
    """The conditioning as an RGB uint8 (H, W, 3) array for the grid, or None (class, none)."""
    import numpy as np

    if kind == "depth":   # inverse depth in [-1, 1]: near is bright
        grey = ((item["depth"][0].numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if kind == "segmentation":  # a fixed colour per label id
        palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
        return palette[item["segmentation"].numpy().clip(0, 255)]
    return None


def to_uint8_hwc(x):
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def save_png(path: Path, array) -> None:
    from PIL import Image

    from tasks.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def make_grid(rows: list[list], tile: int, lead: int, gap: int = 4):
    """Rows of (H, W, 3) uint8 images (None: an empty slot) -> one image; each
    tile is scaled (nearest) to ``tile`` px, and a wider gap follows the first
    ``lead`` columns (the conditioning and the real image) to set the samples apart."""
    import numpy as np
    from PIL import Image

    cols = max(len(r) for r in rows)
    extra = 3 * gap if 0 < lead < cols else 0
    grid = np.full((gap + len(rows) * (tile + gap), gap + cols * (tile + gap) + extra, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            if im is not None:
                y, x = gap + r * (tile + gap), gap + c * (tile + gap) + (extra if c >= lead else 0)
                grid[y:y + tile, x:x + tile] = np.asarray(Image.fromarray(im).resize((tile, tile), Image.NEAREST))
    return grid


# ---- the stage ------------------------------------------------------------------------

def run(cfg: SampleConfig, sampling: SamplingParams, transformer: str | Path = "data/transformer",
        data_dir: str | Path = "data", out: str | Path = "data/samples") -> dict:
    import json
    import shutil

    import torch
    from tqdm import tqdm

    from models import load_pretrained
    from tasks.datasets import ImageNetDataset
    from tasks.io import write_json

    data_dir, out = Path(data_dir), Path(out)
    size, f = training_geometry(transformer)
    resolution = cfg.resolution or size
    check(resolution >= size and resolution % f == 0, "sample.resolution",
          f"{resolution}: must be >= the training size {size} and a multiple of the VQGAN's factor {f}")
    model = load_pretrained(transformer)
    kind = conditioning_kind(model)
    window, grid = (size // f, size // f), (resolution // f, resolution // f)

    dataset = ImageNetDataset(data_dir / "imagenet", "validation", size=resolution,
                              synsets_json=data_dir / "raw" / "synsets.json",
                              depth_root=data_dir / "depth" if kind == "depth" else None,
                              segmentation_root=data_dir / "segmentation" if kind == "segmentation" else None)
    items = [dataset[i] for i in pick_conditions(dataset, cfg.conditions, cfg.classes)]
    if kind == "none":
        c_all = None
    else:
        cond = torch.tensor([it["class_label"] for it in items]) if kind == "class_label" \
            else torch.stack([it[kind] for it in items])
        c_all = torch.cat([model.encode_to_c(chunk)[1] for chunk in cond.split(cfg.batch_size)])

    # Everything goes to a fresh folder that replaces `out` when complete: a run that
    # is interrupted leaves the previous samples intact, and no stale image survives.
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    total = len(items) * cfg.per_condition
    generator = torch.Generator().manual_seed(cfg.seed)
    manifest, samples = [], []
    with tqdm(total=total, desc=f"sample {resolution}px ({kind})", unit="img") as bar:
        for start in range(0, total, cfg.batch_size):
            which = [k // cfg.per_condition for k in range(start, min(start + cfg.batch_size, total))]
            c = c_all[which] if c_all is not None else None
            if grid == window:
                z = model.sample_indices(c, torch.zeros(len(which), 0, dtype=torch.long), steps=grid[0] * grid[1],
                                         generator=generator, **asdict(sampling))
            else:
                z = model.sample_indices_sliding(c, grid, window, generator=generator,
                                                 z_init=torch.zeros(len(which), grid[0] * grid[1], dtype=torch.long),
                                                 **asdict(sampling))
            with torch.no_grad():
                images = model.first_stage_model.decode_indices(z, grid)
            for k, (cond_index, image) in enumerate(zip(which, images)):
                name = f"images/{start + k:05d}.png"
                array = to_uint8_hwc(image)
                save_png(tmp / name, array)
                samples.append(array)
                manifest.append({"file": name, "condition": items[cond_index]["relpath"],
                                 "class_label": items[cond_index]["class_label"]})
            bar.update(len(which))

    lead = [render_condition(it, kind) for it in items]
    rows = []
    for i, it in enumerate(items[:cfg.grid_conditions]):
        own = samples[i * cfg.per_condition:(i + 1) * cfg.per_condition]
        rows.append(([lead[i]] if lead[i] is not None else []) + [to_uint8_hwc(it["image"])] + own)
    n_lead = len(rows[0]) - cfg.per_condition
    save_png(tmp / "grid.png", make_grid(rows, tile=max(resolution, 96), lead=n_lead))
    summary = {"conditioning": kind, "resolution": resolution, "training_size": size,
               "sliding_window": grid != window, "samples": total, **asdict(sampling)}
    write_json(tmp / "samples.json", {**summary, "settings": asdict(cfg), "images": manifest})

    if out.exists():
        old = out.with_name(f".old-{out.name}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    print("sample: " + json.dumps(summary))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transformer", default="data/transformer",
                        help="transformer run folder, checkpoint or s3:// URI (default: %(default)s)")
    parser.add_argument("--data", default="data", help="data folder with imagenet/, depth/, raw/ (default: %(default)s)")
    parser.add_argument("--out", default="data/samples", help="output folder (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    cfg, sampling = load_config(args.params, args.overrides)
    run(cfg, sampling, args.transformer, args.data, args.out)
    return 0
