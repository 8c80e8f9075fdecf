"""Stage ``depth``: inverse depth per image -> data/depth/<split>/<synset>/<name>.png.

Float32 maps stored bytewise as RGBA PNGs (tasks/formats.py), at image resolution,
larger = nearer (MiDaS's relative inverse depth). Models: ``midas_v21`` (what the
original taming script used), ``midas_v21_small``, or ``groundtruth`` (the demo's
exact maps; the demo default, since no weights are needed).

    taming depth [--split train|validation] [--shard I --num-shards N]
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from tasks import annotate


@dataclass
class DepthConfig(annotate.AnnotateConfig):
    model: Literal["midas_v21", "midas_v21_small", "groundtruth"] = "groundtruth"


def midas_annotator(cfg: DepthConfig) -> annotate.Annotator:
    from models import midas

    device = annotate.resolve_device(cfg.device)
    model = midas.load_midas(cfg.model, cfg.weights).to(device)
    return annotate.Annotator(
        load=annotate.load_image,
        key=lambda im: midas.net_input_size(im.shape[1], im.shape[2], model.net_size),
        predict=lambda ims: [d.cpu().numpy() for d in midas.predict(model, [im.to(device) for im in ims])],
        kind="depth",
    )


def annotator(cfg: DepthConfig) -> annotate.Annotator:
    return annotate.groundtruth_annotator("depth") if cfg.model == "groundtruth" else midas_annotator(cfg)


def run(cfg: DepthConfig) -> dict:
    return annotate.annotate(cfg, annotator(cfg))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    annotate.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    return annotate.main(DepthConfig, "depth", annotator, args)
