"""Image-quality measurements: Inception features with FID/KID (torch-fidelity), PSNR/SSIM,
codebook usage.

FID needs torch-fidelity's Inception weights (``models.weights.resolve
("inception_fid")``). Offline the same network (torch-fidelity's
FeatureExtractorInceptionV3) runs with fixed-seed random weights: the Fréchet
distance is then still a consistent yardstick between runs of this project,
but not comparable to any published FID, so it is named
``fd_random_inception`` (with ``comparable_to_published: false``), never ``fid``.
The distances are torch-fidelity's (``kid_features_to_metric``; the Fréchet
distance as ``fid_statistics_to_metric``, exactly, see ``frechet_distance``).
"""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch_fidelity import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from tasks.runtime.progress import progress

log = logging.getLogger(__name__)

FEATURE_LAYER = "2048"  # the pool3 features FID is defined on
RANDOM_INCEPTION_SEED = 0


class SeededInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 architecture with fixed-seed random weights.

    The parent's constructor builds the layers and then loads a weights file;
    we hand it an empty one and initialise instead (He-normal, so activations
    keep their scale through the 40-odd layers and the features are not ~0).
    """

    def __init__(self, name: str, features_list: list[str], **kwargs):
        empty = io.BytesIO()
        torch.save({}, empty)
        empty.seek(0)
        super().__init__(name, features_list, feature_extractor_weights_path=empty, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        assert not state_dict, "SeededInceptionV3 is never loaded with weights"
        g = torch.Generator().manual_seed(RANDOM_INCEPTION_SEED)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                    if m.bias is not None:
                        m.bias.zero_()
        return nn.modules.module._IncompatibleKeys([], [])


def inception(weights: str | None = None) -> tuple[FeatureExtractorInceptionV3, bool]:
    """(feature extractor, pretrained?): the FID Inception, or offline its seeded random twin."""
    from models.weights import WeightsNotFound, resolve

    try:
        path = resolve("inception_fid", weights)
    except WeightsNotFound as e:
        log.debug("%s", e)  # every place looked in, and how to provide the file
        log.warning("No Inception weights (inception_fid): using the offline stand-in, a fixed-seed random-init "
                    "Inception; its Fréchet distance is fd_random_inception, not comparable to published FIDs. "
                    "For FID: taming weights fetch inception_fid (or: taming weights import inception_fid FILE).")
        return SeededInceptionV3("inception-v3-random", [FEATURE_LAYER]), False
    # torch-fidelity unpickles this file itself; resolve() verified its SHA-256 against the published hash
    return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                       feature_extractor_weights_path=str(path)), True


@torch.inference_mode()
def inception_features(net: nn.Module, batches: Iterable[torch.Tensor], desc: str,
                       total: int | None = None) -> torch.Tensor:
    """(N, 2048) float64 pool features (on the CPU) of uint8 (B, 3, H, W) batches, computed
    on the batches' device (move ``net`` there). fp32 throughout, as torch-fidelity: FID is
    sensitive to the features' precision, so no reduced-precision autocast here."""
    feats = [net(b)[0].double().cpu() for b in progress(batches, desc=desc, unit="batch", total=total)]
    return torch.cat(feats)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b) of two feature sets (n, d).

    With at least d images per set this is torch-fidelity's own computation. With
    fewer (every CPU run here), S_a S_b has rank < n and its non-zero eigenvalues are
    the squared singular values of A B^T / sqrt((n_a - 1)(n_b - 1)), A and B the
    centred features: the same number from an n x n problem instead of a 2048 x 2048
    non-symmetric eigendecomposition (about 20 s on two CPU cores).
    """
    if min(len(a), len(b)) >= a.shape[1]:
        return fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b),
                                        verbose=False)[KEY_METRIC_FID]
    a, b = a.double(), b.double()
    ac, bc = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    tr_covmean = torch.linalg.svdvals(ac @ bc.T).sum() / math.sqrt(na * nb)
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    return float(mean_term + ac.pow(2).sum() / na + bc.pow(2).sum() / nb - 2 * tr_covmean)


def distances(a: torch.Tensor, b: torch.Tensor, pretrained: bool, kid_subsets: int = 100,
              kid_subset_size: int = 1000, seed: int = 0, prefix: str = "") -> dict:
    """Fréchet and kernel distances between two feature sets, named honestly.

    With the real Inception weights: ``fid``, ``kid_mean``, ``kid_std``; with
    the random-init stand-in: ``fd_random_inception``, ``kd_random_inception_*``.
    ``prefix`` names a variant (``r`` for reconstruction FID: ``rfid``).
    """
    subset = min(kid_subset_size, len(a), len(b))
    kd = kid_features_to_metric(a, b, kid_subsets=kid_subsets, kid_subset_size=subset, rng_seed=seed, verbose=False)
    fd_name, kd_name = (f"{prefix}fid", f"{prefix}kid") if pretrained else \
        (f"{prefix}fd_random_inception", f"{prefix}kd_random_inception")
    return {
        fd_name: frechet_distance(a, b),
        f"{kd_name}_mean": kd[KEY_METRIC_KID_MEAN],
        f"{kd_name}_std": kd[KEY_METRIC_KID_STD],
        "kid_subset_size": subset,
    }


def extractor_info(pretrained: bool) -> dict:
    """What the distances were measured with, written beside them."""
    return {"comparable_to_published": pretrained,
            "feature_extractor": "inception-v3-compat (pt_inception-2015-12-05)" if pretrained else
            f"inception-v3-compat architecture, random init (seed {RANDOM_INCEPTION_SEED}): offline stand-in"}


class PngBatches:
    """uint8 (B, 3, H, W) batches of the PNGs in ``folder``, in name order, read lazily
    (memory: one batch). ``expect_size``: every image must be that many pixels square."""

    def __init__(self, folder: Path, batch_size: int, expect_size: int | None = None):
        self.paths = sorted(Path(folder).glob("*.png"))
        if not self.paths:
            raise FileNotFoundError(f"{folder}: no sample PNGs (run the sample stage first)")
        self.batch_size, self.expect_size = batch_size, expect_size
        self.total = math.ceil(len(self.paths) / batch_size)

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[torch.Tensor]:
        from tasks.data.images import open_image, to_rgb

        for i in range(0, len(self.paths), self.batch_size):
            arrays = []
            for p in self.paths[i:i + self.batch_size]:
                with open_image(p) as im:
                    if self.expect_size and im.size != (self.expect_size, self.expect_size):
                        raise ValueError(f"{p}: {im.size[0]}x{im.size[1]} px, the reference images are "
                                         f"{self.expect_size}x{self.expect_size} (evaluate.resolution)")
                    arrays.append(to_rgb(im))
            yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def png_batches(folder: Path, batch_size: int, expect_size: int | None = None) -> PngBatches:
    return PngBatches(folder, batch_size, expect_size)


def psnr_ssim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM (11x11 Gaussian, sigma 1.5) of images in [-1, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x01, y01 = (x.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2
    mse = (x01 - y01).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    ssim = structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none")
    return 10 * torch.log10(1 / mse), ssim


def colourfulness(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean |pixel - its grey| (grey: the mean of its R, G, B), in [0, 1] units, of
    RGB images in [-1, 1]: 0 for a grey image. The ratio of reconstructions' to inputs' says
    whether a first stage keeps colour (a VQGAN that loses it reconstructs grey scenes)."""
    x01 = (x.clamp(-1, 1) + 1) / 2
    return (x01 - x01.mean(1, keepdim=True)).abs().flatten(1).mean(1)


def codebook_usage(counts: torch.Tensor) -> dict:
    """Used entries, their fraction, and the perplexity exp(H) of the code distribution."""
    p = counts.double() / counts.sum()
    nz = p[p > 0]
    return {
        "codebook_size": int(counts.numel()),
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).double().mean()),
        "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
        "tokens": int(counts.sum()),
    }


# ---- the reference statistics (stage fid-reference writes them, evaluate reads them) ----

REFERENCE_FEATURES, REFERENCE_INFO = "features.npy", "reference.json"


def save_reference(folder: Path, features: torch.Tensor, info: dict) -> None:
    """features (N, 2048) as float32 .npy and what they are, each written atomically."""
    from tasks.data.files import atomic_path, write_json

    with atomic_path(folder / REFERENCE_FEATURES) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features.float().cpu().numpy(), allow_pickle=False)
    write_json(folder / REFERENCE_INFO, info)


def load_reference(folder: Path) -> tuple[torch.Tensor, dict]:
    """(features (N, 2048) float64, info) of a reference written by save_reference."""
    import json

    features_path, info_path = folder / REFERENCE_FEATURES, folder / REFERENCE_INFO
    if not (features_path.is_file() and info_path.is_file()):
        raise FileNotFoundError(f"{folder}: no reference features (run the fid-reference stage first)")
    features = np.load(features_path, allow_pickle=False)
    if features.ndim != 2 or features.shape[1] != 2048:
        raise ValueError(f"{features_path}: expected (N, 2048) features, got {features.shape}")
    return torch.from_numpy(features).double(), json.loads(info_path.read_text())
