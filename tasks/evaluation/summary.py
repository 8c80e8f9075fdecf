"""The numbers to look at first: what ``dvc metrics show`` lists (dvc.yaml declares only these).

Each evaluating stage writes, beside its full-precision files, a summary under
``metrics/summary/``, rounded to 4 significant digits and keyed so that DVC's table
(columns sorted by name) reads FD, PSNR, SSIM, codebook usage:

    metrics/summary/samples.json   {"fd_random_inception": {"samples": 0.99}}
    metrics/summary/vqgan.json     {"fd_random_inception": {"reconstruction": 1.9},
                                    "colourfulness_ratio": {"image": 0.9},   # reconstructions' / inputs'
                                    "psnr": {"image": 22.4, "depth": 27.1}, "ssim": {...}, "usage": {...}}

(``fid`` instead of ``fd_random_inception`` with the real Inception weights.)
"""
from __future__ import annotations

SUMMARY_DIR = "summary"  # under the metrics folder


def short(x: float) -> float:
    return float(f"{x:.4g}")


def fd_name(metrics: dict) -> str:
    return "fid" if metrics["comparable_to_published"] else "fd_random_inception"


def samples_summary(samples: dict) -> dict:
    """The samples' Fréchet distance (``metrics/samples.json``)."""
    fd = fd_name(samples)
    return {fd: {"samples": short(samples[fd])}}


def vqgan_summary(reconstruction: dict, codebook: dict) -> dict:
    """The image VQGAN's reconstruction Fréchet distance, and PSNR, SSIM and codebook usage per
    VQGAN (``metrics/reconstruction.json``, ``metrics/codebook.json``)."""
    fd = fd_name(reconstruction["image"])
    scores = {key: {name: short(r[key]) for name, r in reconstruction.items() if key in r}
              for key in ("psnr", "ssim", "pixel_accuracy")}   # pixel accuracy: a segmentation VQGAN's
    return {fd: {"reconstruction": short(reconstruction["image"][f"r{fd}"])},
            "colourfulness_ratio": {"image": short(reconstruction["image"]["colourfulness_ratio"])},
            **{key: values for key, values in scores.items() if values},
            "usage": {name: short(c["usage"]) for name, c in codebook.items()}}
