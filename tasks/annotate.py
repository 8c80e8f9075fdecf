"""Stage ``annotate@<kind>``: one network's map for every extracted image.

    depth         -> data/dataset/depth/<split>/<synset>/<name>.png         float32 inverse depth, RGBA-packed
    segmentation  -> data/dataset/segmentation/<split>/<synset>/<name>.png  uint8 COCO-Stuff labels (182 classes)
    objects       -> data/dataset/objects/<split>/<synset>/<name>.json      a scene dataset's boxes (records)

Maps are at image resolution (tasks/data/formats.py). dvc.yaml makes one stage per entry
of params ``annotate``, which holds only what the chosen conditioning reads, so a D-RIN
profile never runs DeepLab and a class-conditional one runs no annotator at all.

Depth models: ``midas_v20`` (the MiDaS the published D-RIN models were trained on),
``midas_v21`` (what torch.hub serves now; the original's script used whatever the hub
gave), ``midas_v21_small``; segmentation: ``deeplabv2_cocostuff`` (DeepLab v2 MSC, as the
original's script). ``groundtruth`` reads the demo's exact maps (no weights needed).
Objects: ``dataset``, the boxes a scene dataset comes with (acquire wrote them to data/raw/objects).

    taming annotate --kind depth|segmentation [--split train|validation] [--shard I --num-shards N]
"""
from __future__ import annotations

import argparse

from tasks.config.schema import ANNOTATORS, AnnotateConfig
from tasks.config.typed import ConfigError
from tasks.data import annotation
from tasks.runtime import locks
from tasks.runtime.devices import resolve_device


def midas_annotator(cfg: AnnotateConfig) -> annotation.Annotator:
    from models import midas

    device = resolve_device(cfg.device)
    model = midas.load_midas(cfg.model, cfg.weights).to(device)
    return annotation.Annotator(
        load=annotation.load_image,
        key=lambda im: midas.net_input_size(im.shape[1], im.shape[2], model.net_size),
        predict=lambda ims: [d.cpu().numpy() for d in midas.predict(model, [im.to(device) for im in ims])],
        kind="depth",
    )


def deeplab_annotator(cfg: AnnotateConfig) -> annotation.Annotator:
    import torch

    from models import deeplab

    device = resolve_device(cfg.device)
    model = deeplab.load_deeplab(cfg.model, cfg.weights).to(device)
    return annotation.Annotator(
        load=annotation.load_image,
        key=lambda im: tuple(im.shape),  # native resolution: equal sizes share a forward
        predict=lambda ims: list(deeplab.segment(model, torch.stack(ims).to(device)).cpu().numpy()),
        kind="segmentation",
    )


def annotator(kind: str, cfg: AnnotateConfig) -> annotation.Annotator:
    if cfg.model == "groundtruth":
        return annotation.groundtruth_annotator(kind)
    return midas_annotator(cfg) if kind == "depth" else deeplab_annotator(cfg)


def run(kind: str, cfg: AnnotateConfig) -> dict:
    if kind == "objects":
        from tasks.data.layout import Layout
        from tasks.data.objects.records import place_records

        if cfg.num_shards > 1:
            raise ConfigError("--num-shards: annotate objects copies records; run it whole")
        layout = Layout(cfg.data_dir)
        with locks.hold(layout.objects):   # one writer, as for the maps
            return place_records(layout.raw / "objects", layout.images, layout.objects, cfg.splits)
    return annotation.annotate(cfg, annotator(kind, cfg))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=list(ANNOTATORS), help="which maps (params annotate.<kind>)")
    annotation.add_arguments(parser)


def main(config, args: argparse.Namespace) -> None:
    if args.kind not in config.annotate:
        raise ConfigError(f"annotate.{args.kind}: not configured; conditioning {config.conditioning} "
                          f"reads {', '.join(config.annotate) or 'no per-image maps'}")
    run(args.kind, annotation.with_flags(config.annotate[args.kind], args))
