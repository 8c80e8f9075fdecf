"""Stages fid-reference, evaluate and evaluate-vqgan: torch-fidelity distances named
honestly, the reference features computed once, reconstruction metrics and codebook usage,
on tiny real data with the official-format image VQGAN."""
import json
import math
import shutil

import pytest
import torch
import yaml
from PIL import Image
from test_sample import make_validation_data
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from tasks import evaluate, evaluate_vqgan, fid_reference
from tasks.config.schema import EvaluateConfig
from tasks.data.layout import Layout
from tasks.evaluation.fidelity import (
    SeededInceptionV3,
    codebook_usage,
    colourfulness,
    distances,
    frechet_distance,
    inception,
    psnr_ssim,
)
from tasks.runtime.errors import StageError

DEPTH_DDCONFIG = dict(double_z=False, z_channels=8, resolution=32, in_channels=1, out_ch=1, ch=32,
                      ch_mult=[1, 1, 1], num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def make_depth_vqgan(folder):
    """A random-weight 1-channel VQGAN saved in the run-folder layout (checkpoint + project YAML)."""
    from models.vqgan import VQModel

    torch.manual_seed(0)
    model = VQModel(DEPTH_DDCONFIG, n_embed=16, embed_dim=4)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "configs").mkdir()
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, folder / "checkpoints" / "last.ckpt")
    config = {"model": {"target": "taming.models.vqgan.VQModel",
                        "params": {"ddconfig": DEPTH_DDCONFIG, "n_embed": 16, "embed_dim": 4}}}
    (folder / "configs" / "depth-project.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, reference_dir):
    """6 validation images, 4 of them the FID reference; the 'samples' are those 4
    reference images themselves (centre crops, as the dataset gives them)."""
    root = tmp_path_factory.mktemp("evaluate")
    layout = Layout(make_validation_data(root / "data", classes=3, per_class=2, size=32))
    samples = root / "samples"
    (samples / "images").mkdir(parents=True)
    listed = layout.filelist("validation").read_text().split()
    for i, k in enumerate([0, 1, 3, 4]):     # what spread_indices spreads 4 of 6 over
        Image.open(layout.images / "validation" / listed[k]).crop((4, 0, 36, 32)).save(samples / "images" / f"{i:05d}.png")
    shutil.copytree(f"{reference_dir}/taming_small/vqgan_image", layout.vqgan("image"))
    make_depth_vqgan(layout.vqgan("depth"))
    cfg = EvaluateConfig(resolution=32, reference_images=4, rfid_images=4, batch_size=4, kid_subsets=5)
    reference = fid_reference.run(cfg, layout)
    summary = {"reference": reference,
               "samples": evaluate.run(cfg, samples, layout.fid, root / "metrics"),
               **evaluate_vqgan.run(cfg, ["image", "depth"], layout, root / "metrics")}
    return root, layout, summary


def test_offline_distances_are_never_called_fid(evaluated):
    root, _, summary = evaluated
    files = {name: json.loads((root / "metrics" / f"{name}.json").read_text())
             for name in ("samples", "reconstruction", "codebook")}
    assert files["samples"] == summary["samples"]
    text = json.dumps(files)
    assert '"fid"' not in text and '"rfid"' not in text and '"kid_mean"' not in text
    s = files["samples"]
    assert s["comparable_to_published"] is False and "random init" in s["feature_extractor"]
    assert s["num_samples"] == s["num_reference"] == 4
    assert (s["reference_split"], s["resolution"]) == ("validation", 32)
    assert summary["reference"]["images"] == 4 and summary["reference"]["classes"] == 3
    # the 'samples' are the reference images: their distance is ~0, the reconstructions' is not
    rfd = files["reconstruction"]["image"]["rfd_random_inception"]
    assert abs(s["fd_random_inception"]) < 1e-3 * rfd and rfd > 0


def test_reconstruction_and_codebook(evaluated):
    _, _, summary = evaluated
    for name in ("image", "depth"):
        r = summary["reconstruction"][name]
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["images"] == 6
        c = summary["codebook"][name]
        assert c["tokens"] == 6 * 8 * 8                 # the whole split's 8x8 token grids
        assert 1 <= c["codes_used"] <= c["codebook_size"] and c["usage"] == c["codes_used"] / c["codebook_size"]
        assert 1 <= c["perplexity"] <= c["codes_used"] + 1e-9
    assert summary["codebook"]["image"]["codebook_size"] == 64 and summary["codebook"]["depth"]["codebook_size"] == 16
    image = summary["reconstruction"]["image"]
    assert image["colourfulness_ratio"] == pytest.approx(image["colourfulness"] / image["colourfulness_input"])
    assert image["colourfulness_input"] > 0.05 and "colourfulness" not in summary["reconstruction"]["depth"]


def test_evaluate_reuses_the_reference_and_refuses_mismatches(evaluated, tmp_path):
    """The reference features are read, not recomputed; samples of another size and a reference
    made with another feature extractor are refused, naming what to do."""
    root, layout, summary = evaluated
    features = (layout.fid / "features.npy").read_bytes()
    again = evaluate.run(EvaluateConfig(resolution=32, batch_size=4, kid_subsets=5), root / "samples", layout.fid,
                         tmp_path / "metrics")
    assert again["fd_random_inception"] == summary["samples"]["fd_random_inception"]
    assert (layout.fid / "features.npy").read_bytes() == features
    with pytest.raises(ValueError, match=r"00000.png: 32x32 px, the reference images are 16x16"):
        evaluate.run(EvaluateConfig(resolution=16, batch_size=4, kid_subsets=5), root / "samples", layout.fid,
                     tmp_path / "metrics")
    info = json.loads((layout.fid / "reference.json").read_text())
    other = tmp_path / "fid"
    shutil.copytree(layout.fid, other)
    (other / "reference.json").write_text(json.dumps({**info, "feature_extractor": "inception-v3-compat (real)"}))
    with pytest.raises(StageError, match="dvc repro -f fid-reference"):
        evaluate.run(EvaluateConfig(resolution=32, batch_size=4, kid_subsets=5), root / "samples", other,
                     tmp_path / "metrics")


@pytest.mark.parametrize("n", [5, 20])
def test_frechet_distance_is_torch_fidelitys(n):
    """Fewer images than feature dimensions: the low-rank route gives torch-fidelity's number."""
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, 64, generator=g, dtype=torch.float64)
    b = torch.randn(n + 3, 64, generator=g, dtype=torch.float64) * 1.5 + 0.3
    reference = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert frechet_distance(a, b) == pytest.approx(reference["frechet_inception_distance"], rel=1e-6)


def test_pretrained_distances_are_fid_and_kid():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=g, dtype=torch.float64), torch.randn(20, 8, generator=g, dtype=torch.float64) + 1
    m = distances(a, b, True, kid_subsets=3, kid_subset_size=10)
    assert set(m) == {"fid", "kid_mean", "kid_std", "kid_subset_size"} and m["fid"] > 1
    assert set(distances(a, b, False, kid_subsets=3, prefix="r")) == \
        {"rfd_random_inception", "rkd_random_inception_mean", "rkd_random_inception_std", "kid_subset_size"}


def test_random_inception_is_fixed_and_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TAMING_WEIGHTS_DIR", str(tmp_path))   # an empty cache: the resolver must give up
    monkeypatch.delenv("TAMING_WEIGHTS_S3", raising=False)
    net, pretrained = inception()
    assert not pretrained and isinstance(net, SeededInceptionV3)
    again = SeededInceptionV3("x", ["2048"])
    for (k, v), (_, w) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    features = net(x)[0]
    assert features.shape == (2, 2048) and features.std() > 1e-3    # He init keeps the signal alive


def test_colourfulness_is_the_distance_from_grey():
    grey = torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8) * 2 - 1
    assert torch.allclose(colourfulness(grey), torch.zeros(2), atol=1e-7)
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)   # (1, 0, 0): grey 1/3
    assert colourfulness(red).item() == pytest.approx((2 / 3 + 1 / 3 + 1 / 3) / 3)
    assert colourfulness(red * 0.5).item() == pytest.approx(colourfulness(red).item() / 2)   # halfway to grey


def test_psnr_ssim_and_usage_values():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    psnr, ssim = psnr_ssim(x, x)
    assert torch.allclose(ssim, torch.ones(2)) and (psnr > 90).all()
    psnr, _ = psnr_ssim(torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), 1.0))   # 0.5 apart in [0, 1]
    assert math.isclose(psnr.item(), 10 * math.log10(4), rel_tol=1e-5)
    u = codebook_usage(torch.tensor([5, 5, 0, 0]))
    assert u == {"codebook_size": 4, "codes_used": 2, "usage": 0.5, "perplexity": pytest.approx(2.0), "tokens": 10}
