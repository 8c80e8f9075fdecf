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
from dataclasses import asdict
from pathlib import Path

from models.sampling_settings import SamplingSettings
from tasks.config.schema import SampleConfig
from tasks.data.layout import DATA, Layout
from tasks.runtime.errors import StageError


def conditioning_kind(model) -> str:
    """none | depth | segmentation | class_label: what the transformer is conditioned on."""
    return "none" if model.be_unconditional else model.cond_stage_key


def render_condition(item: dict, kind: str):
    """The conditioning as an RGB uint8 (H, W, 3) array for the grid, or None (class, none)."""
    from tasks.data.images import labels_to_rgb, to_rgb_arrays

    if kind == "depth":   # inverse depth in [-1, 1]: near is bright
        return to_rgb_arrays(item["depth"][None])[0]
    if kind == "segmentation":
        return labels_to_rgb(item["segmentation"].numpy())
    return None


def save_png(path: Path, array) -> None:
    from PIL import Image

    from tasks.data.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


# ---- the stage ------------------------------------------------------------------------

def run(cfg: SampleConfig, sampling: SamplingSettings, transformer: str | Path = DATA.transformer,
        data_dir: str | Path = DATA.root, out: str | Path = DATA.samples) -> dict:
    import json
    import shutil

    import torch

    from models.folder import ModelFolder
    from models.pretrained import load_pretrained
    from tasks.data.datasets import ImageNetDataset, spread_indices
    from tasks.data.files import write_json
    from tasks.data.images import make_grid, to_rgb_arrays
    from tasks.runtime.progress import progress

    layout, out = Layout(Path(data_dir)), Path(out)
    folder = ModelFolder.open(transformer)
    size, f = folder.resolution, folder.downsampling
    resolution = cfg.resolution or size
    if resolution < size or resolution % f:
        raise StageError(f"sample.resolution: {resolution} must be >= the training size {size} of {folder.root} "
                         f"and a multiple of its VQGAN's downsampling factor {f}")
    model = load_pretrained(folder.checkpoint, folder.config_path)
    kind = conditioning_kind(model)
    window, grid = (size // f, size // f), (resolution // f, resolution // f)

    maps = {f"{kind}_root": layout.maps(kind)} if kind in ("depth", "segmentation") else {}
    dataset = ImageNetDataset(layout.images, "validation", size=resolution, synsets_json=layout.synsets_json, **maps)
    try:
        indices = spread_indices(dataset.class_labels, cfg.conditions, cfg.classes)
    except ValueError as e:
        raise StageError(f"sample.classes: {e}") from None
    items = [dataset[i] for i in indices]
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
    with progress(total=total, desc=f"sample {resolution}px ({kind})", unit="img") as bar:
        for start in range(0, total, cfg.batch_size):
            which = [k // cfg.per_condition for k in range(start, min(start + cfg.batch_size, total))]
            c = c_all[which] if c_all is not None else None
            if grid == window:
                z = model.sample_indices(c, torch.zeros(len(which), 0, dtype=torch.long), steps=grid[0] * grid[1],
                                         settings=sampling, generator=generator)
            else:
                z = model.sample_indices_sliding(c, grid, window, settings=sampling, generator=generator,
                                                 z_init=torch.zeros(len(which), grid[0] * grid[1], dtype=torch.long))
            with torch.no_grad():
                images = model.first_stage_model.decode_indices(z, grid)
            for k, (cond_index, array) in enumerate(zip(which, to_rgb_arrays(images))):
                name = f"images/{start + k:05d}.png"
                save_png(tmp / name, array)
                samples.append(array)
                manifest.append({"file": name, "condition": items[cond_index]["relpath"],
                                 "class_label": items[cond_index]["class_label"]})
            bar.update(len(which))

    lead = [render_condition(it, kind) for it in items]
    rows = []
    for i, it in enumerate(items[:cfg.grid_conditions]):
        own = samples[i * cfg.per_condition:(i + 1) * cfg.per_condition]
        rows.append(([lead[i]] if lead[i] is not None else []) + [to_rgb_arrays(it["image"][None])[0]] + own)
    n_lead = len(rows[0]) - cfg.per_condition
    save_png(tmp / "grid.png", make_grid(rows, tile=max(resolution, 96), lead=n_lead, gap=4))
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
    parser.add_argument("--transformer", default=str(DATA.transformer),
                        help="transformer run folder, checkpoint or s3:// URI (default: %(default)s)")
    parser.add_argument("--data", default=str(DATA.root),
                        help="data folder with imagenet/, depth/, raw/ (default: %(default)s)")
    parser.add_argument("--out", default=str(DATA.samples), help="output folder (default: %(default)s)")


def main(config, args: argparse.Namespace) -> None:
    run(config.sample, config.sampling, args.transformer, args.data, args.out)
