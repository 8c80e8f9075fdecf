"""Stage `fid-reference`: Inception features of the images the samples are compared with.

Writes ``data/fid/features.npy`` (float32, one 2048-d pool3 row per image) and
``data/fid/reference.json`` (split, image count, resolution, feature extractor). The
reference is ``evaluate.reference_images`` images of the ``evaluate.reference`` split,
spread evenly over the classes (null: the whole split; the paper's tables: the train
split), preprocessed as the training data (shorter side to ``evaluate.resolution``, centre
crop). A separate stage so that a sampling sweep (`dvc exp run -S top_k=...`) reruns only
sample and evaluate and never recomputes these features.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tasks.config.schema import EvaluateConfig
from tasks.data.layout import DATA, Layout


def run(cfg: EvaluateConfig, layout: Layout = DATA, out: Path | None = None,
        inception_weights: str | None = None) -> dict:
    from torch.utils.data import DataLoader, Subset

    from tasks.data.datasets import ImageNetDataset, spread_indices
    from tasks.data.images import to_uint8
    from tasks.evaluation.fidelity import extractor_info, inception, inception_features, save_reference
    from tasks.runtime.devices import resolve_device

    out = Path(out or layout.fid)
    device = resolve_device(cfg.device)
    dataset = ImageNetDataset(layout.images, cfg.reference, size=cfg.resolution, synsets_json=layout.synsets_json)
    chosen = spread_indices(dataset.class_labels, cfg.reference_images or len(dataset))
    loader = DataLoader(Subset(dataset, chosen), batch_size=cfg.batch_size, shuffle=False)
    net, pretrained = inception(inception_weights)
    features = inception_features(net.to(device), (to_uint8(b["image"]).to(device) for b in loader),
                                  f"fid-reference: {cfg.reference} images", total=len(loader))
    info = {"split": cfg.reference, "images": len(chosen), "of": len(dataset), "resolution": cfg.resolution,
            "classes": len(set(dataset.class_labels[i] for i in chosen)), **extractor_info(pretrained)}
    save_reference(out, features, info)
    print(f"fid-reference: {len(chosen)} {cfg.reference} images of {len(dataset)}, "
          f"{info['classes']} classes, {cfg.resolution}px, {info['feature_extractor']}")
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inception-weights", help="torch-fidelity Inception weights file (default: the resolver)")


def main(config, args: argparse.Namespace) -> None:
    run(config.evaluate, inception_weights=args.inception_weights)
