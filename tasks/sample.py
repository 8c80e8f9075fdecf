"""Stage `sample`: draw images from the trained transformer, with the KV cache.

Conditionings come from the validation split: for D-RIN a validation image's
depth map (encoded by the transformer's depth VQGAN), for a segmentation model
its label map, for a class-conditional model its class label, for a scene model
the boxes of its centre crop (drawn as the grid's first column); an unconditional
model needs none, a coordinate-conditioned one (FacesHQ) the output's coordinates.
Each conditioning gets ``per_condition`` samples, drawn with the
top-level ``top_k`` / ``top_p`` / ``temperature`` / ``guidance_scale`` (the only
stage that reads them, so ``dvc exp run -S top_k=250`` reruns just ``sample`` and
``evaluate``). A ``resolution`` above the training size samples the larger latent
grid with a sliding window, as the paper's high-resolution results. ``device: auto``
samples on CUDA when present. The sampling itself is tasks/generation's, shared
with ``taming sample-model`` and the app.

Writes ``data/samples/images/NNNNN.png`` (what ``evaluate`` scores),
``data/samples/samples.json`` (which conditioning each image comes from, and
the settings), and ``data/samples/grid.png``: one row per conditioning, the
conditioning rendered as an image, the real validation image, then its samples.
Images are written batch by batch; only the grid's few rows stay in memory.
"""
from __future__ import annotations

import argparse
import functools
from dataclasses import asdict, replace
from pathlib import Path

from models.sampling_settings import SamplingSettings
from tasks.config.schema import SampleConfig
from tasks.data.layout import DATA, Layout
from tasks.runtime.errors import StageError


class ValidationConditions:
    """The chosen validation items as conditions, loaded and encoded when a batch needs them."""

    def __init__(self, model, dataset, indices: list[int], hw: tuple[int, int]):
        self.model, self.dataset, self.indices, self.hw = model, dataset, indices, hw
        self._cached = functools.lru_cache(maxsize=64)(self._load)  # a condition's samples may span batches

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self._cached(i)

    def _load(self, i: int):
        import torch

        from tasks.generation.conditions import Condition, coord_condition, encode_maps, render_map
        from tasks.generation.model import SCENE_KINDS

        item, kind, model = self.dataset[self.indices[i]], self.model.kind, self.model
        name, label = item["relpath"], item["class_label"]
        if kind in SCENE_KINDS:   # the boxes of the validation crop, numbered by the model's categories
            from tasks.data.objects.annotations import FULL_CROP
            from tasks.generation.boxes import scene_condition

            table = model.scene.categories
            objects = [a._replace(category_no=table.number(a.category_id)) for a in item["objects"]]
            size = tuple(item["image"].shape[1:])
            return scene_condition(model, name, objects, size, item["crop_bbox"] or FULL_CROP, label)
        if kind == "none":
            return Condition(name, None, class_label=label)
        if kind == "coord":
            coord = coord_condition(model, self.hw, name)
            return Condition(name, coord.tokens, coord.picture, label)
        if kind == "class_label":
            return Condition(name, torch.tensor([[label]], device=model.device), class_label=label)
        array = item["depth"][0].numpy() if kind == "depth" else item["segmentation"].numpy().astype("uint8")
        return Condition(name, encode_maps(model, [array]), render_map(kind, array), label)


def run(cfg: SampleConfig, sampling: SamplingSettings, transformer: str | Path = DATA.transformer,
        data_dir: str | Path = DATA.root, out: str | Path = DATA.samples) -> dict:
    import json
    import shutil

    from tasks.data.datasets import spread_indices
    from tasks.data.files import write_json
    from tasks.data.images import make_grid, to_rgb_arrays
    from tasks.generation.model import SamplingModel
    from tasks.generation.output import save_png
    from tasks.generation.tokens import sample_batches
    from tasks.runtime.progress import progress

    layout, out = Layout(Path(data_dir)), Path(out)
    if cfg.precision is not None:
        sampling = replace(sampling, precision=cfg.precision)
    model = SamplingModel.open(transformer, cfg.device)
    size = model.training_size
    resolution = cfg.resolution or size
    try:
        grid = model.grid(resolution, resolution)
    except StageError as e:
        raise StageError(f"sample.resolution: {e} ({model.folder.root})") from None
    if sampling.guided and not model.can_guide:
        raise StageError(f"guidance_scale: {sampling.guidance_scale} needs a transformer trained with condition "
                         f"dropout (transformer.label_dropout > 0); {model.folder.root} was not")
    kind = model.kind

    dataset = validation_dataset(kind, layout, resolution)
    try:
        indices = spread_indices(dataset.class_labels, cfg.conditions, cfg.classes)
    except ValueError as e:
        raise StageError(f"sample.classes: {e}") from None
    conditions = ValidationConditions(model, dataset, indices, (resolution, resolution))

    # Everything goes to a fresh folder that replaces `out` when complete: a run that
    # is interrupted leaves the previous samples intact, and no stale image survives.
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    total = len(indices) * cfg.per_condition
    shown = min(cfg.grid_conditions, len(indices))
    generator = model.generator(cfg.seed)
    manifest, grid_samples = [], [[] for _ in range(shown)]
    tokens = total * grid[0] * grid[1]
    with progress(total=tokens, desc=f"sample {resolution}px ({kind}, {model.device.type})", unit="tok") as bar:
        for jobs, pictures in sample_batches(model, conditions, cfg.per_condition, cfg.batch_size, grid, sampling,
                                             generator, on_position=bar.update):
            for (i, k), array in zip(jobs, pictures):
                name = f"images/{i * cfg.per_condition + k:05d}.png"
                save_png(tmp / name, array)
                manifest.append({"file": name, "condition": conditions[i].name,
                                 "class_label": conditions[i].class_label})
                if i < shown:
                    grid_samples[i].append(array)

    rows = []
    for i in range(shown):
        lead = conditions[i].picture
        real = to_rgb_arrays(dataset[indices[i]]["image"][None])[0]
        rows.append(([lead] if lead is not None else []) + [real] + grid_samples[i])
    n_lead = len(rows[0]) - cfg.per_condition
    picture = make_grid(rows, tile=max(resolution, 96), lead=n_lead, gap=4)
    large = None
    if cfg.large_resolution:
        large = _large_samples(cfg, sampling, model, layout, indices[:min(2, shown)], tmp, picture.shape[1])
        picture = _stacked(picture, large.pop("picture"))
    save_png(tmp / "grid.png", picture)
    summary = {"conditioning": kind, "resolution": resolution, "training_size": size,
               "sliding_window": grid != model.window, "samples": total, "device": model.device.type,
               **asdict(sampling), **({"large": large} if large else {})}
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


def validation_dataset(kind: str, layout: Layout, px: int):
    """The validation split at ``px`` with what a ``kind`` model is conditioned on (maps or boxes)."""
    from tasks.generation.model import SCENE_KINDS

    if kind in SCENE_KINDS:
        from tasks.data.objects.dataset import ObjectsDataset
        return ObjectsDataset(layout.images, layout.objects, "validation", px, layout.synsets_json)
    from tasks.data.datasets import ImageNetDataset
    maps = {f"{kind}_root": layout.maps(kind)} if kind in ("depth", "segmentation") else {}
    return ImageNetDataset(layout.images, "validation", size=px, synsets_json=layout.synsets_json, **maps)


def _large_samples(cfg: SampleConfig, sampling: SamplingSettings, model, layout: Layout, indices: list[int],
                   tmp: Path, width: int) -> dict:
    """One sample at ``cfg.large_resolution`` for each of ``indices`` (what the paper is named
    for: a sliding window over a latent grid larger than the training one), written to
    ``large/NNNNN.png`` (not under images/: evaluate scores training-size samples) and drawn as
    labelled rows of condition | real | sample, twice as large as their pixels."""
    from tasks.data.images import make_grid, to_rgb_arrays
    from tasks.generation.output import save_png
    from tasks.generation.tokens import sample_batches
    from tasks.runtime.progress import progress

    px = cfg.large_resolution
    try:
        grid = model.grid(px, px)
    except StageError as e:
        raise StageError(f"sample.large_resolution: {e} ({model.folder.root})") from None
    dataset = validation_dataset(model.kind, layout, px)
    conditions = ValidationConditions(model, dataset, indices, (px, px))
    rows = []
    with progress(total=len(indices) * grid[0] * grid[1], desc=f"sample {px}px sliding window", unit="tok") as bar:
        for jobs, pictures in sample_batches(model, conditions, 1, cfg.batch_size, grid, sampling,
                                             model.generator(cfg.seed), on_position=bar.update):
            for (i, _), array in zip(jobs, pictures):
                save_png(tmp / f"large/{i:05d}.png", array)
                real = to_rgb_arrays(dataset[indices[i]]["image"][None])[0]
                lead = conditions[i].picture
                rows.append(([lead] if lead is not None else []) + [real, array])
    tile = min(2 * px, max(96, (width - 40) // len(rows[0])))
    title = f"{px} px, sliding window (trained at {model.training_size} px)"
    picture = make_grid(rows, tile=tile, lead=len(rows[0]) - 1, gap=4, title=title)
    return {"resolution": px, "grid": list(grid), "images": [f"large/{i:05d}.png" for i in range(len(rows))],
            "picture": picture}


def _stacked(top, bottom):
    """Two pictures one above the other on white, left-aligned."""
    import numpy as np

    width = max(top.shape[1], bottom.shape[1])
    page = np.full((top.shape[0] + bottom.shape[0], width, 3), 255, np.uint8)
    page[:top.shape[0], :top.shape[1]] = top
    page[top.shape[0]:, :bottom.shape[1]] = bottom
    return page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transformer", default=str(DATA.transformer),
                        help="transformer run folder, checkpoint or s3:// URI (default: %(default)s)")
    parser.add_argument("--data", default=str(DATA.root),
                        help="data folder with imagenet/, depth/, raw/ (default: %(default)s)")
    parser.add_argument("--out", default=str(DATA.samples), help="output folder (default: %(default)s)")


def main(config, args: argparse.Namespace) -> None:
    run(config.sample, config.sampling, args.transformer, args.data, args.out)
