"""Stage `evaluate`: how close are the samples to the reference images?

Writes ``metrics/samples.json``: the Fréchet and kernel Inception distances of
``data/samples/images`` against the reference features of stage fid-reference
(``data/fid``), and the protocol they were measured with: the reference split and its
image count, the number of samples (and of classes they were drawn for), the resolution
and the feature extractor. Offline (no Inception weights) the distances are reported as
``fd_random_inception`` / ``kd_random_inception_*``, never ``fid``: see
tasks/evaluation/fidelity.py. The first stages are scored by stage evaluate-vqgan.
Also ``metrics/summary/samples.json``, the headline number rounded (tasks/evaluation/summary.py):
what ``dvc metrics show`` lists.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasks.config.schema import EvaluateConfig
from tasks.data.layout import DATA, METRICS
from tasks.runtime.errors import StageError


def sample_protocol(samples: Path) -> dict:
    """How many samples, for how many classes, from the sample stage's samples.json."""
    manifest = samples / "samples.json"
    if not manifest.is_file():
        return {}
    info = json.loads(manifest.read_text())
    labels = [m.get("class_label") for m in info.get("images", []) if m.get("class_label") is not None]
    return {"conditioning": info.get("conditioning"), "classes_sampled": len(set(labels))} if labels else \
        {"conditioning": info.get("conditioning")}


def run(cfg: EvaluateConfig, samples: str | Path = DATA.samples, reference: str | Path = DATA.fid,
        metrics_dir: str | Path = METRICS, inception_weights: str | None = None) -> dict:
    from tasks.data.files import write_json
    from tasks.evaluation.fidelity import (
        distances,
        extractor_info,
        inception,
        inception_features,
        load_reference,
        png_batches,
    )
    from tasks.evaluation.summary import SUMMARY_DIR, samples_summary
    from tasks.runtime.devices import resolve_device

    samples, metrics_dir = Path(samples), Path(metrics_dir)
    reference_features, info = load_reference(Path(reference))
    device = resolve_device(cfg.device)
    net, pretrained = inception(inception_weights)
    if extractor_info(pretrained)["feature_extractor"] != info["feature_extractor"]:
        raise StageError(f"{reference}: the reference features were made with {info['feature_extractor']!r}, "
                         f"the samples would be measured with {extractor_info(pretrained)['feature_extractor']!r} "
                         "(Inception weights fetched or removed since): rerun it, `dvc repro -f fid-reference`")
    batches = png_batches(samples / "images", cfg.batch_size, expect_size=cfg.resolution)
    features = inception_features(net.to(device), (b.to(device) for b in batches), "evaluate: samples",
                                  total=batches.total)
    kid = dict(kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed)
    metrics = {**distances(features, reference_features, pretrained, **kid), **extractor_info(pretrained),
               "num_samples": len(features), **sample_protocol(samples),
               "reference_split": info["split"], "num_reference": len(reference_features),
               "resolution": cfg.resolution}
    write_json(metrics_dir / "samples.json", metrics)
    write_json(metrics_dir / SUMMARY_DIR / "samples.json", samples_summary(metrics))
    print("evaluate: " + json.dumps(metrics, indent=1))
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", default=str(DATA.samples), help="the sample stage's folder (default: %(default)s)")
    parser.add_argument("--reference", default=str(DATA.fid), help="fid-reference's folder (default: %(default)s)")
    parser.add_argument("--metrics", default=str(METRICS), help="metrics folder (default: %(default)s)")
    parser.add_argument("--inception-weights", help="torch-fidelity Inception weights file (default: the resolver)")


def main(config, args: argparse.Namespace) -> None:
    run(config.evaluate, args.samples, args.reference, args.metrics, args.inception_weights)
