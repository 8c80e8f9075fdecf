"""Stage ``segment``: COCO-Stuff labels per image -> data/segmentation/<split>/<synset>/<name>.png.

uint8 label PNGs at image resolution (182 COCO-Stuff classes). Models:
``deeplabv2_cocostuff`` (DeepLab v2 MSC, what the original taming script used) or
``groundtruth`` (the demo's exact maps; the demo default, since no weights are needed).

    taming segment [--split train|validation] [--shard I --num-shards N]
"""
from __future__ import annotations

import argparse

from tasks.config.schema import SegmentConfig
from tasks.data import annotation
from tasks.runtime.devices import resolve_device


def deeplab_annotator(cfg: SegmentConfig) -> annotation.Annotator:
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


def annotator(cfg: SegmentConfig) -> annotation.Annotator:
    return annotation.groundtruth_annotator("segmentation") if cfg.model == "groundtruth" else deeplab_annotator(cfg)


def run(cfg: SegmentConfig) -> dict:
    return annotation.annotate(cfg, annotator(cfg))


add_arguments = annotation.add_arguments


def main(config, args: argparse.Namespace) -> None:
    run(annotation.with_flags(config.segment, args))
