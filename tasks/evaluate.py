"""Stage `evaluate`: how good are the samples and the first stages?

Writes four metric files:

- ``metrics/samples.json``: Fréchet and kernel Inception distances of
  ``data/samples/images`` against the reference split (validation images);
- ``metrics/reconstruction.json``: per VQGAN, PSNR and SSIM of its
  reconstructions of the validation split, and for the image VQGAN the
  reconstruction FID (validation images vs their reconstructions);
- ``metrics/codebook.json``: per VQGAN, how many codebook entries the whole
  validation split uses, and the perplexity of their distribution;
- ``metrics/summary/{samples,vqgan}.json``: the headline numbers of the three,
  rounded (tasks/evaluation/summary.py): what ``dvc metrics show`` lists.

Offline (no Inception weights) the Fréchet distance is reported as
``fd_random_inception``, never ``fid``: see tasks/evaluation/fidelity.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasks.config.schema import EvaluateConfig
from tasks.data.files import write_json
from tasks.data.layout import DATA, METRICS, Layout


def run(cfg: EvaluateConfig, samples: str | Path = DATA.samples / "images", data_dir: str | Path = DATA.root,
        vqgans: dict[str, str | Path] | None = None, metrics_dir: str | Path = METRICS,
        inception_weights: str | None = None) -> dict:
    """Score the samples and the VQGANs ``vqgans`` ({"image": folder, "depth": folder})."""
    import torch
    from torch.utils.data import DataLoader

    from models.folder import ModelFolder
    from tasks.data.datasets import ImageNetDataset, spread_indices
    from tasks.data.images import to_uint8
    from tasks.evaluation.fidelity import (
        PngBatches,
        codebook_usage,
        distances,
        extractor_info,
        inception,
        inception_features,
        psnr_ssim,
    )
    from tasks.evaluation.summary import SUMMARY_DIR, samples_summary, vqgan_summary
    from tasks.runtime.errors import StageError
    from tasks.runtime.progress import progress

    layout, metrics_dir = Layout(Path(data_dir)), Path(metrics_dir)
    vqgans = dict(vqgans if vqgans is not None else {"image": layout.vqgan("image")})
    unknown = set(vqgans) - {"image", "depth"}
    if unknown or "image" not in vqgans:
        raise StageError(f"evaluate scores the image VQGAN and optionally the depth VQGAN, got {sorted(vqgans)}")
    folders = {name: ModelFolder.open(folder) for name, folder in vqgans.items()}
    models = {name: folder.load() for name, folder in folders.items()}
    size = folders["image"].resolution
    net, pretrained = inception(inception_weights)

    maps = {"depth_root": layout.maps("depth")} if "depth" in models else {}
    dataset = ImageNetDataset(layout.images, "validation", size=size, synsets_json=layout.synsets_json, **maps)
    # Inception is the expensive part on a CPU: a subset, spread over the classes, is the FID reference
    in_fid = torch.zeros(len(dataset), dtype=torch.bool)
    in_fid[spread_indices(dataset.class_labels, cfg.fid_images or len(dataset))] = True
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)

    reference, reconstructed = [], []
    stats = {name: {"psnr": [], "ssim": [], "counts": torch.zeros(m.n_embed, dtype=torch.long)}
             for name, m in models.items()}
    with torch.inference_mode():
        for i, batch in enumerate(progress(loader, desc="evaluate: validation reconstructions", unit="batch")):
            fid = in_fid[i * cfg.batch_size:i * cfg.batch_size + len(batch["image"])]
            for name, model in models.items():
                x = batch[name]
                xrec, _, idx = model(x)
                psnr, ssim = psnr_ssim(xrec, x)
                stats[name]["psnr"].append(psnr)
                stats[name]["ssim"].append(ssim)
                stats[name]["counts"] += torch.bincount(idx.flatten(), minlength=model.n_embed)
                if name == "image" and fid.any():
                    reference.append(net(to_uint8(x[fid]))[0].double())
                    reconstructed.append(net(to_uint8(xrec[fid]))[0].double())
    reference, reconstructed = torch.cat(reference), torch.cat(reconstructed)
    sample_features = inception_features(net, PngBatches(Path(samples), cfg.batch_size), "evaluate: samples")

    kid = dict(kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed)
    sample_metrics = {**distances(sample_features, reference, pretrained, **kid), **extractor_info(pretrained),
                      "num_samples": len(sample_features), "num_reference": len(reference)}
    reconstruction = {}
    for name, s in stats.items():
        reconstruction[name] = {"psnr": float(torch.cat(s["psnr"]).mean()), "ssim": float(torch.cat(s["ssim"]).mean()),
                                "images": len(dataset)}
    reconstruction["image"].update(distances(reconstructed, reference, pretrained, prefix="r", **kid),
                                   **extractor_info(pretrained))
    codebook = {name: codebook_usage(s["counts"]) for name, s in stats.items()}

    write_json(metrics_dir / "samples.json", sample_metrics)
    write_json(metrics_dir / "reconstruction.json", reconstruction)
    write_json(metrics_dir / "codebook.json", codebook)
    write_json(metrics_dir / SUMMARY_DIR / "samples.json", samples_summary(sample_metrics))
    write_json(metrics_dir / SUMMARY_DIR / "vqgan.json", vqgan_summary(reconstruction, codebook))
    summary = {"samples": sample_metrics, "reconstruction": reconstruction, "codebook": codebook}
    print("evaluate: " + json.dumps(summary, indent=1))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", default=str(DATA.samples / "images"), help="sample PNGs (default: %(default)s)")
    parser.add_argument("--data", default=str(DATA.root),
                        help="data folder with imagenet/, depth/, raw/ (default: %(default)s)")
    parser.add_argument("--vqgan", action="append", metavar="NAME=FOLDER",
                        help="VQGAN to score: image=FOLDER, depth=FOLDER (default: image and depth under data/vqgan)")
    parser.add_argument("--metrics", default=str(METRICS), help="metrics folder (default: %(default)s)")
    parser.add_argument("--inception-weights", help="torch-fidelity Inception weights file (default: the resolver)")


def main(config, args: argparse.Namespace) -> None:
    layout = Layout(Path(args.data))
    specs = args.vqgan or [f"{n}={layout.vqgan(n)}" for n in ("image", "depth")]
    vqgans = dict(s.split("=", 1) for s in specs)
    run(config.evaluate, args.samples, args.data, vqgans, args.metrics, args.inception_weights)
