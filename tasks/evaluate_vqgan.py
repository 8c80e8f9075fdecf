"""Stage `evaluate-vqgan`: how well do the first stages reconstruct the validation split?

Writes (full precision; ``dvc metrics show`` lists the rounded summary,
``metrics/summary/vqgan.json``: tasks/evaluation/summary.py)

- ``metrics/reconstruction.json``: per first stage, PSNR and SSIM of its reconstructions
  of the whole validation split (a segmentation VQGAN: pixel accuracy of its label maps),
  and for the image VQGAN the reconstruction FID of ``evaluate.rfid_images`` validation
  images against their reconstructions (the paper's rFID protocol);
- ``metrics/codebook.json``: per first stage, how many codebook entries the validation
  split uses and the perplexity of their distribution.

Not rerun by a sampling sweep: it depends on the first stages and the data only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tasks.config.schema import EvaluateConfig
from tasks.data.layout import DATA, METRICS, Layout


def run(cfg: EvaluateConfig, first_stages: list[str], layout: Layout = DATA, metrics_dir: str | Path = METRICS,
        inception_weights: str | None = None) -> dict:
    """Score the first stages ``first_stages`` (names under data/vqgan: image, depth, segmentation)."""
    import torch
    from torch.utils.data import DataLoader

    from models.first_stage import load_first_stage
    from models.folder import ModelFolder
    from tasks.data.datasets import ImageNetDataset, spread_indices, vqgan_input
    from tasks.data.files import write_json
    from tasks.data.images import to_uint8
    from tasks.evaluation.fidelity import codebook_usage, colourfulness, distances, extractor_info, inception, psnr_ssim
    from tasks.evaluation.summary import SUMMARY_DIR, vqgan_summary
    from tasks.runtime.devices import resolve_device
    from tasks.runtime.progress import progress

    device, metrics_dir = resolve_device(cfg.device), Path(metrics_dir)
    folders = {name: ModelFolder.open(layout.vqgan(name)) for name in first_stages}
    models = {name: load_first_stage(f.checkpoint, f.config_path).to(device) for name, f in folders.items()}
    maps = {f"{name}_root": layout.maps(name) for name in first_stages if name != "image"}
    dataset = ImageNetDataset(layout.images, "validation", size=folders["image"].resolution,
                              synsets_json=layout.synsets_json, **maps)
    # Inception is the expensive part on a CPU: rFID on a subset spread over the classes
    in_rfid = torch.zeros(len(dataset), dtype=torch.bool)
    in_rfid[spread_indices(dataset.class_labels, cfg.rfid_images or len(dataset))] = True
    net, pretrained = inception(inception_weights)
    net = net.to(device)

    originals, reconstructed, start = [], [], 0
    scores = {name: {} for name in models}
    counts = {name: torch.zeros(m.n_embed, dtype=torch.long) for name, m in models.items()}
    with torch.inference_mode():
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)
        for batch in progress(loader, desc="evaluate-vqgan: validation reconstructions", unit="batch"):
            rfid = in_rfid[start:start + len(batch["image"])].to(device)
            start += len(batch["image"])
            for name, model in models.items():
                x = vqgan_input(batch, name, folders[name].n_labels).to(device)
                xrec, _, idx = model(x)
                counts[name] += torch.bincount(idx.flatten().cpu(), minlength=model.n_embed)
                if name == "segmentation":
                    right = (xrec.argmax(1) == x.argmax(1)).flatten(1).float().mean(1)
                    scores[name].setdefault("pixel_accuracy", []).append(right.cpu())
                    continue
                psnr, ssim = psnr_ssim(xrec, x)
                scores[name].setdefault("psnr", []).append(psnr.cpu())
                scores[name].setdefault("ssim", []).append(ssim.cpu())
                if name == "image":
                    scores[name].setdefault("colourfulness", []).append(colourfulness(xrec).cpu())
                    scores[name].setdefault("colourfulness_input", []).append(colourfulness(x).cpu())
                if name == "image" and rfid.any():
                    originals.append(net(to_uint8(x[rfid]))[0].double().cpu())
                    reconstructed.append(net(to_uint8(xrec[rfid]))[0].double().cpu())

    reconstruction = {name: {**{k: float(torch.cat(v).mean()) for k, v in s.items()}, "images": len(dataset)}
                      for name, s in scores.items()}
    image = reconstruction["image"]
    image["colourfulness_ratio"] = image["colourfulness"] / max(image["colourfulness_input"], 1e-12)
    kid = dict(kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed)
    reconstruction["image"].update(distances(torch.cat(reconstructed), torch.cat(originals), pretrained,
                                             prefix="r", **kid), **extractor_info(pretrained))
    codebook = {name: codebook_usage(c) for name, c in counts.items()}
    write_json(metrics_dir / "reconstruction.json", reconstruction)
    write_json(metrics_dir / "codebook.json", codebook)
    write_json(metrics_dir / SUMMARY_DIR / "vqgan.json", vqgan_summary(reconstruction, codebook))
    summary = {"reconstruction": reconstruction, "codebook": codebook}
    print("evaluate-vqgan: " + json.dumps(summary, indent=1))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DATA.root), help="data folder (default: %(default)s)")
    parser.add_argument("--metrics", default=str(METRICS), help="metrics folder (default: %(default)s)")
    parser.add_argument("--inception-weights", help="torch-fidelity Inception weights file (default: the resolver)")


def main(config, args: argparse.Namespace) -> None:
    run(config.evaluate, list(config.vqgan), Layout(Path(args.data)), args.metrics, args.inception_weights)
