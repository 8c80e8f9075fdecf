"""Stage ``depth``: inverse depth per image -> data/depth/<split>/<synset>/<name>.png.

Float32 maps stored bytewise as RGBA PNGs (tasks/data/formats.py), at image resolution,
larger = nearer (MiDaS's relative inverse depth). Models: ``midas_v21`` (what the
original taming script used), ``midas_v21_small``, or ``groundtruth`` (the demo's
exact maps; the demo default, since no weights are needed).

    taming depth [--split train|validation] [--shard I --num-shards N]
"""
from __future__ import annotations

import argparse

from tasks.config.schema import DepthConfig
from tasks.data import annotation
from tasks.runtime.devices import resolve_device


def midas_annotator(cfg: DepthConfig) -> annotation.Annotator:
    from models import midas

    device = resolve_device(cfg.device)
    model = midas.load_midas(cfg.model, cfg.weights).to(device)
    return annotation.Annotator(
        load=annotation.load_image,
        key=lambda im: midas.net_input_size(im.shape[1], im.shape[2], model.net_size),
        predict=lambda ims: [d.cpu().numpy() for d in midas.predict(model, [im.to(device) for im in ims])],
        kind="depth",
    )


def annotator(cfg: DepthConfig) -> annotation.Annotator:
    return annotation.groundtruth_annotator("depth") if cfg.model == "groundtruth" else midas_annotator(cfg)


def run(cfg: DepthConfig) -> dict:
    return annotation.annotate(cfg, annotator(cfg))


add_arguments = annotation.add_arguments


def main(config, args: argparse.Namespace) -> None:
    run(annotation.with_flags(config.depth, args))
