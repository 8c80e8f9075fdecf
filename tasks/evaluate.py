"""Stage `evaluate`: how good are the samples and the first stages?

Writes three metric files (``dvc metrics show`` reads them):

- ``metrics/samples.json``: Fréchet and kernel Inception distances of
  ``data/samples/images`` against the reference split (validation images);
- ``metrics/reconstruction.json``: per VQGAN, PSNR and SSIM of its
  reconstructions of the validation split, and for the image VQGAN the
  reconstruction FID (validation images vs their reconstructions);
- ``metrics/codebook.json``: per VQGAN, how many codebook entries the whole
  validation split uses, and the perplexity of their distribution.

Offline (no Inception weights) the Fréchet distance is reported as
``fd_random_inception``, never ``fid``: see tasks/fidelity.py.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from tasks.config import check, from_params
from tasks.io import write_json


@dataclass
class EvaluateConfig:
    """params.yaml section ``evaluate``."""
    batch_size: int = 32
    fid_images: int | None = None   # validation images in the FID reference and rFID (null: all);
                                    # PSNR, SSIM and codebook usage always cover the whole split
    kid_subsets: int = 100
    kid_subset_size: int = 1000     # capped at the smaller image set
    seed: int = 0                   # KID subset draws

    def __post_init__(self):
        check(self.batch_size > 0, "evaluate.batch_size", "must be positive")
        check(self.fid_images is None or self.fid_images > 1, "evaluate.fid_images", "must be > 1 or null")
        check(self.kid_subsets > 0, "evaluate.kid_subsets", "must be positive")
        check(self.kid_subset_size > 1, "evaluate.kid_subset_size", "must be > 1")


# ---- the stage ------------------------------------------------------------------------

def vqgan_size(folder: str | Path) -> int:
    """The side (px) a VQGAN run was trained at, from its project YAML."""
    from models.pretrained import locate, read_config

    return int(read_config(locate(folder)[1])["params"]["ddconfig"]["resolution"])


def run(cfg: EvaluateConfig, samples: str | Path = "data/samples/images", data_dir: str | Path = "data",
        vqgans: dict[str, str | Path] | None = None, metrics_dir: str | Path = "metrics",
        inception_weights: str | None = None) -> dict:
    """Score the samples and the VQGANs ``vqgans`` ({"image": folder, "depth": folder})."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from models import load_pretrained
    from tasks.datasets import ImageNetDataset
    from tasks.fidelity import (codebook_usage, distances, extractor_info, inception, inception_features,
                                png_batches, psnr_ssim, to_uint8)
    from tasks.sample import pick_conditions

    data_dir, metrics_dir = Path(data_dir), Path(metrics_dir)
    vqgans = dict(vqgans if vqgans is not None else {"image": data_dir / "vqgan" / "image"})
    unknown = set(vqgans) - {"image", "depth"}
    if unknown or "image" not in vqgans:
        raise ValueError(f"evaluate scores the image VQGAN and optionally the depth VQGAN, got {sorted(vqgans)}")
    models = {name: load_pretrained(folder) for name, folder in vqgans.items()}
    size = vqgan_size(vqgans["image"])
    net, pretrained = inception(inception_weights)

    dataset = ImageNetDataset(data_dir / "imagenet", "validation", size=size,
                              synsets_json=data_dir / "raw" / "synsets.json",
                              depth_root=data_dir / "depth" if "depth" in models else None)
    # Inception is the expensive part on a CPU: a subset, spread over the classes, is the FID reference
    in_fid = torch.zeros(len(dataset), dtype=torch.bool)
    in_fid[pick_conditions(dataset, cfg.fid_images or len(dataset), None)] = True
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)

    reference, reconstructed = [], []
    stats = {name: {"psnr": [], "ssim": [], "counts": torch.zeros(m.n_embed, dtype=torch.long)}
             for name, m in models.items()}
    with torch.inference_mode():
        for i, batch in enumerate(tqdm(loader, desc="evaluate: validation reconstructions", unit="batch")):
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
    sample_features = inception_features(net, png_batches(Path(samples), cfg.batch_size), "evaluate: samples")

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
    summary = {"samples": sample_metrics, "reconstruction": reconstruction, "codebook": codebook}
    print("evaluate: " + json.dumps(summary, indent=1))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", default="data/samples/images", help="sample PNGs (default: %(default)s)")
    parser.add_argument("--data", default="data", help="data folder with imagenet/, depth/, raw/ (default: %(default)s)")
    parser.add_argument("--vqgan", action="append", metavar="NAME=FOLDER",
                        help="VQGAN to score: image=FOLDER, depth=FOLDER (default: image and depth under data/vqgan)")
    parser.add_argument("--metrics", default="metrics", help="metrics folder (default: %(default)s)")
    parser.add_argument("--inception-weights", help="torch-fidelity Inception weights file (default: the resolver)")


def main(args: argparse.Namespace) -> int:
    cfg = from_params(EvaluateConfig, args.params, "evaluate", args.overrides)
    specs = args.vqgan or [f"{n}={Path(args.data) / 'vqgan' / n}" for n in ("image", "depth")]
    vqgans = dict(s.split("=", 1) for s in specs)
    run(cfg, args.samples, args.data, vqgans, args.metrics, args.inception_weights)
    return 0
