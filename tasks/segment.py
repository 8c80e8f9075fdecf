"""Stage ``segment``: COCO-Stuff labels per image -> data/segmentation/<split>/<synset>/<name>.png.

uint8 label PNGs at image resolution (182 COCO-Stuff classes). Models:
``deeplabv2_cocostuff`` (DeepLab v2 MSC, what the original taming script used) or
``groundtruth`` (the demo's exact maps; the demo default, since no weights are needed).

    taming segment [--split train|validation] [--shard I --num-shards N]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from tasks import annotate


@dataclass
class SegmentConfig(annotate.AnnotateConfig):
    model: Literal["deeplabv2_cocostuff", "groundtruth"] = "groundtruth"


def deeplab_annotator(cfg: SegmentConfig) -> annotate.Annotator:
    import torch

    from models import deeplab

    device = annotate.resolve_device(cfg.device)
    model = deeplab.load_deeplab(cfg.model, cfg.weights).to(device)
    return annotate.Annotator(
        load=annotate.load_image,
        key=lambda im: tuple(im.shape),  # native resolution: equal sizes share a forward
        predict=lambda ims: list(deeplab.segment(model, torch.stack(ims).to(device)).cpu().numpy()),
        kind="segmentation",
    )


def annotator(cfg: SegmentConfig) -> annotate.Annotator:
    return annotate.groundtruth_annotator("segmentation") if cfg.model == "groundtruth" else deeplab_annotator(cfg)


def run(cfg: SegmentConfig) -> dict:
    return annotate.annotate(cfg, annotator(cfg))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    annotate.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return annotate.main(SegmentConfig, "segment", annotator, args)
