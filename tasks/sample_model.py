"""Command `sample-model`: sample any transformer folder, ours or an official taming log
folder, local or s3://, with no dataset (the original's sample_fast.py / make_samples.py).

    taming sample-model logs/2021-04-03T19-39-50_cin_transformer -n 50 --classes 9,232,901 \\
        -k 600 -p 0.92 -t 1.0 --batch-size 25 -o samples/cin          # -> samples/cin/<class>/<n>.png
    taming sample-model data/transformer --maps depth.png -n 4         # -> <outdir>/depth/<n>.png
    taming sample-model data/transformer --photos street.jpg           # annotated with MiDaS on the fly
    taming sample-model logs/2020-11-09T13-31-51_sflckr --maps seg.png --resolution 1280x832
    taming sample-model data/transformer --maps d.png --complete photo.jpg --keep-fraction 0.5
    taming sample-model logs/coco_scene_transformer --boxes layout.yaml --resolution 512   # scenes

What each sample is conditioned on follows the model: classes (`--classes`, default all),
map files (`--maps`: depth as the pipeline's RGBA float32 PNG or an 8/16-bit grey PNG;
segmentation label PNGs), photos annotated on the fly (`--photos`), boxes and labels
(`--boxes`: layout files, or the pipeline's per-image records; scene models), or nothing
(unconditional; a coordinate-conditioned model gets the output's coordinates). A scene's
drawing is written beside its samples (`<condition>/boxes.png`). `-n` samples are drawn for
each condition and written as `<outdir>/<condition>/<n>.png` (`<outdir>/<n>.png`
unconditional or coordinates), batch by batch, with
`samples.json` (the settings) and, with `--npz`, `samples.npz` (`arr_0` the pictures,
`arr_1` the class labels). `--resolution` above the training size (square or not)
samples with a sliding window; `--complete` keeps the top of an image and samples the
rest. The same seed on the same device gives the same images.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from models.sampling_settings import PRECISIONS
from tasks.runtime.errors import StageError


def _classes(text: str, n_classes: int) -> list[int]:
    from tasks.data.classes import str_to_indices

    if text in ("all", "imagenet"):
        return list(range(n_classes))
    try:
        return str_to_indices(text)
    except ValueError as e:
        raise StageError(f"--classes: {e}") from None


def conditions_for(model, args: argparse.Namespace, hw: tuple[int, int]) -> list:
    """The model's conditions from the command line, checked before any sampling."""
    from tasks.generation import conditions as cond

    given = [name for name, value in (("--classes", args.classes), ("--maps", args.maps), ("--photos", args.photos),
                                      ("--boxes", args.boxes)) if value]
    wants = {"class_label": "--classes", "depth": "--maps or --photos", "segmentation": "--maps or --photos",
             "coord": "nothing (the output's coordinates)", "none": "nothing"}.get(model.kind, "--boxes")
    if any(flag not in wants for flag in given):
        raise StageError(f"{model.name} is conditioned on {model.kind.replace('_label', '')}: give it {wants}, "
                         f"not {', '.join(given)}")
    if model.kind == "none":
        return [cond.no_condition(model)]
    if model.kind == "coord":
        return [cond.coord_condition(model, hw)]
    if model.kind == "class_label":
        return [cond.class_condition(model, c) for c in _classes(args.classes or "all", model.n_classes)]
    if wants == "--boxes":
        found = scene_conditions(model, args.boxes, hw)
    elif not (args.maps or args.photos):
        raise StageError(f"{model.name} is conditioned on {model.kind}: give --maps (map files) or --photos")
    else:
        found = [cond.map_condition(model, path, hw) for path in args.maps]
    if args.photos:
        from tasks.generation.photos import photo_condition
        found += [photo_condition(model, path, hw, args.annotator, args.annotator_weights) for path in args.photos]
    names = [c.name for c in found]
    if len(set(names)) != len(names):
        raise StageError(f"condition files must have distinct names (they name the output folders): {names}")
    return found


def scene_conditions(model, files: list[str], hw: tuple[int, int]) -> list:
    """Every layout in the --boxes files (YAML/JSON layouts, or the pipeline's per-image records)."""
    from tasks.data.objects.records import LayoutError, read_layouts
    from tasks.generation.boxes import scene_condition

    if not files:
        raise StageError(f"{model.name} is conditioned on boxes ({model.kind}): give --boxes FILE (a YAML/JSON "
                         f"layout, or records such as data/dataset/objects/validation/<synset>/<name>.json)")
    try:
        layouts = [layout for path in files for layout in read_layouts(path, model.scene.categories)]
    except LayoutError as e:
        raise StageError(str(e)) from None
    return [scene_condition(model, name, annotations, hw) for name, annotations in layouts]


def run(args: argparse.Namespace) -> dict:
    from models.sampling_settings import InvalidSampling, SamplingSettings
    from tasks.data.files import write_json
    from tasks.data.images import load_rgb
    from tasks.generation import conditions as cond
    from tasks.generation.model import SCENE_KINDS, SamplingModel
    from tasks.generation.output import NpzWriter, save_png
    from tasks.generation.tokens import sample_batches
    from tasks.runtime.progress import progress

    try:
        settings = SamplingSettings(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                                    guidance_scale=args.guidance_scale, precision=args.precision)
    except InvalidSampling as e:
        raise StageError(f"--{e.key.replace('_', '-')}: {e}") from None
    if args.num_samples < 1 or args.batch_size < 1:
        raise StageError("-n and --batch-size must be >= 1")
    model = SamplingModel.open(args.model, args.device)
    if settings.guided and not model.can_guide:
        raise StageError(f"--guidance-scale {settings.guidance_scale}: {model.name} was not trained with condition "
                         f"dropout (no null token), so it has no unconditional model to guide against")
    try:
        hw = cond.parse_resolution(args.resolution) if args.resolution else (model.training_size,) * 2
    except ValueError as e:
        raise StageError(f"--resolution: {e}") from None
    grid = model.grid(*hw)
    conditions = conditions_for(model, args, hw)

    completion = None
    if args.complete:
        if args.keep_rows is None and args.keep_fraction is None:
            raise StageError("--complete needs --keep-rows PIXELS or --keep-fraction F (the top part to keep)")
        kept = cond.keep_token_rows(model, grid, args.keep_rows, args.keep_fraction)
        completion = (cond.completion_tokens(model, load_rgb(args.complete), hw), kept * grid[1])

    out = Path(args.outdir or Path("samples") / model.name)
    total = len(conditions) * args.num_samples
    labels = model.kind == "class_label"
    npz = NpzWriter(out / "samples.npz", (total, *hw, 3), labels=labels) if args.npz else None
    generator = model.generator(args.seed)
    for c in conditions if model.kind in SCENE_KINDS else ():   # each sample beside the drawing of its boxes
        save_png(out / c.name / "boxes.png", c.picture)
    positions = grid[0] * grid[1] - (completion[1] if completion else 0)
    desc = f"sample {hw[1]}x{hw[0]} ({model.kind}, {model.device.type})"
    with progress(total=total * positions, desc=desc, unit="tok") as bar:
        with npz if npz is not None else contextlib.nullcontext():
            for jobs, pictures in sample_batches(model, conditions, args.num_samples, args.batch_size, grid, settings,
                                                 generator, completion, on_position=bar.update):
                for (i, k), picture in zip(jobs, pictures):
                    save_png(out / conditions[i].name / f"{k:06d}.png", picture)
                if npz is not None:
                    npz.add(pictures, [conditions[i].class_label for i, _ in jobs] if labels else None)
    summary = {"model": str(args.model), "checkpoint_sha256": model.folder.sha256, "conditioning": model.kind,
               "conditions": [c.name for c in conditions], "per_condition": args.num_samples, "samples": total,
               "resolution": [hw[1], hw[0]], "sliding_window": grid != model.window, "seed": args.seed,
               "device": model.device.type, "completion": {"image": str(args.complete), "kept_token_rows": kept}
               if completion else None, **vars(settings)}
    write_json(out / "samples.json", summary)
    print(f"sample-model: {total} images in {out}")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="transformer folder (checkpoints/last.ckpt + configs/*-project.yaml), "
                                      "its checkpoint, or the s3:// URI of a published one")
    parser.add_argument("-o", "--outdir", help="output folder (default: samples/<model folder name>)")
    parser.add_argument("-n", "--num-samples", type=int, default=50, help="samples per condition (default: %(default)s)")
    parser.add_argument("--classes", help="class labels, e.g. 9,232,901 or 0-10 (class-conditional; default: all)")
    parser.add_argument("--maps", nargs="+", default=[], metavar="PNG",
                        help="depth maps (RGBA float32 or 8/16-bit grey PNG) or segmentation label PNGs")
    parser.add_argument("--photos", nargs="+", default=[], metavar="IMAGE",
                        help="photos, annotated on the fly with MiDaS (depth) or DeepLab (segmentation)")
    parser.add_argument("--boxes", nargs="+", default=[], metavar="FILE",
                        help="scene models: layouts of boxes and labels (YAML/JSON), or the pipeline's records "
                             "(data/dataset/objects/<split>/<synset>/<name>.json)")
    parser.add_argument("--annotator", help="midas_v21 (default for depth), midas_v21_small, deeplabv2_cocostuff")
    parser.add_argument("--annotator-weights", help="the annotator's weights file (default: `taming weights` cache)")
    parser.add_argument("-k", "--top-k", type=int, default=250, help="keep the k most likely tokens (default: %(default)s)")
    parser.add_argument("-p", "--top-p", type=float, default=1.0, help="nucleus mass to keep (default: %(default)s: off)")
    parser.add_argument("-t", "--temperature", type=float, default=1.0, help="(default: %(default)s)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance (1: off; needs a model trained with condition dropout)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the GPT's weights while sampling (default: the model's own); bfloat16 and int8 "
                             "stream fewer bytes where the CPU runs them natively, else float32 is used")
    parser.add_argument("--batch-size", type=int, default=25, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--resolution", help="output size: SIDE or WIDTHxHEIGHT in pixels, e.g. 1280x832 "
                                             "(default: the training size; larger: sliding window)")
    parser.add_argument("--complete", metavar="IMAGE", help="keep the top of this image and sample the rest")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("--keep-rows", type=int, help="pixel rows of --complete's image to keep (whole token rows)")
    keep.add_argument("--keep-fraction", type=float, help="fraction of the height of --complete's image to keep")
    parser.add_argument("--npz", action="store_true", help="also write samples.npz (arr_0 images, arr_1 labels)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def main(args: argparse.Namespace) -> None:
    run(args)
