"""train-vqgan on a tiny real dataset: learning, outputs in the original layout, resume after
SIGKILL, DDP with two gloo processes, segmentation one-hot input, config validation."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.pretrained import load_with_report
from scene_data import make_scene_data
from tasks.config.typed import ConfigError
from tasks import cli
from tasks.config.params import vqgan_config
from tasks.config.schema import VQGANConfig
from tasks.data.layout import DATA
from tasks.train_vqgan import dataset, run
from tasks.training.lit_vqgan import LitVQGAN

REPO = Path(__file__).resolve().parents[1]
TAMING = [sys.executable, "-m", "tasks.cli"]
TINY = {"resolution": 32, "n_embed": 32, "embed_dim": 8, "batch_size": 4, "base_learning_rate": 1e-4,
        "ddconfig": {"z_channels": 8, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1},
        "loss": {"perceptual_weight": 0.0, "disc_start": 2, "disc_ndf": 8}, "max_steps": 4,
        "val_every": 2, "ckpt_every": 2}


@pytest.fixture(scope="module")
def scene_repo(tmp_path_factory):
    return make_scene_data(tmp_path_factory.mktemp("scenes"), n_train=4, n_val=2, classes=2)


def _params(root: Path, **models) -> Path:
    """A params file the CLI's whole-file check accepts: tokenize names only configured VQGANs."""
    image_model = "image" if "image" in models else next(iter(models))
    tokenize = {"image_model": image_model, "cond": "depth" if "depth" in models and image_model != "depth" else "none"}
    (root / "params.yaml").write_text(yaml.safe_dump({"vqgan": models, "tokenize": tokenize}))
    return root / "params.yaml"


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_loss_decreases_on_a_repeated_batch(scene_repo, monkeypatch):
    monkeypatch.chdir(scene_repo)
    torch.manual_seed(0)
    cfg = vqgan_config("image", {**TINY, "loss": {**TINY["loss"], "disc_start": 10_000}})
    module = LitVQGAN("image", cfg.model_params(), cfg.loss_params(), learning_rate=1e-3)
    batch = torch.utils.data.default_collate([dataset(DATA, "image", "train", 32, False)[i] for i in range(4)])

    def rec_loss():
        with torch.no_grad():
            xrec, _, _ = module.model(batch["image"])
        return (xrec - batch["image"]).abs().mean().item()

    before = rec_loss()
    trainer = L.Trainer(accelerator="cpu", max_steps=2 * 30, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader([batch] * 30, batch_size=None))
    assert module.update_step == 30
    assert rec_loss() < 0.6 * before


def test_stage_writes_original_layout_metrics_and_grids(scene_repo, monkeypatch):
    monkeypatch.chdir(scene_repo)
    cfg = vqgan_config("depth", TINY)
    final = run(cfg)
    folder = scene_repo / "data/vqgan/depth"
    assert final == Path("data/vqgan/depth/checkpoints/last.ckpt")
    assert not (folder / "resume").exists()  # scratch state is gone after success

    ckpt = torch.load(folder / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # parameter updates, as the original counts
    assert ckpt["hyper_parameters"]["learning_rate"] == pytest.approx(1e-4 * 4)  # base x batch x 1 x 1
    assert "encoder.conv_in.weight" in ckpt["state_dict"] and "loss.discriminator.main.0.weight" in ckpt["state_dict"]

    project = yaml.safe_load((folder / "configs/depth-project.yaml").read_text())["model"]
    assert project["target"] == "taming.models.vqgan.VQModel"
    assert project["params"]["ddconfig"]["in_channels"] == project["params"]["ddconfig"]["out_ch"] == 1
    model, report = load_with_report(folder)
    assert (report.missing, report.unexpected) == ([], [])
    assert model.encode(torch.zeros(1, 1, 32, 32))[2].shape == (1, 64)

    metrics = json.loads((folder / "dvclive/metrics.json").read_text())
    assert 0 < metrics["val"]["codebook_usage"] <= 1 and metrics["val"]["perplexity"] >= 1
    assert (folder / "dvclive/plots/metrics/train/rec_loss.tsv").is_file()
    grids = sorted((folder / "dvclive/plots/images/reconstructions").glob("*.png"))
    assert [g.name for g in grids] == ["000002.png", "000004.png"]  # one per validation
    # 4 val images; inputs above reconstructions, each 32 px image shown at 128 px (nearest), labelled
    grid = np.asarray(Image.open(grids[-1]).convert("L"))
    width, height = 4 + 4 * 132, 4 + 2 * 132
    assert grid.shape[1] > width and grid.shape[0] > height
    left, top = grid.shape[1] - width, grid.shape[0] - height  # the label column and the title line
    assert (grid[top:, :left - 4] < 100).any() and (grid[:top - 4, left:] < 100).any()  # text in both margins
    tile = grid[top + 4:top + 4 + 128, left + 4:left + 4 + 128]
    assert (tile == np.repeat(np.repeat(tile[::4, ::4], 4, 0), 4, 1)).all()  # 4x4 blocks: scaled, not blurred


def test_segmentation_model_takes_one_hot_labels_and_accumulates(scene_repo, monkeypatch):
    monkeypatch.chdir(scene_repo)
    cfg = vqgan_config("segmentation", {**TINY, "n_classes": 12, "max_steps": 2, "accumulate_grad_batches": 2})
    run(cfg)
    ckpt = torch.load(scene_repo / "data/vqgan/segmentation/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 4
    assert ckpt["hyper_parameters"]["learning_rate"] == pytest.approx(1e-4 * 4 * 2)  # base x batch x accumulation
    model, report = load_with_report(scene_repo / "data/vqgan/segmentation")
    assert type(model).__name__ == "VQSegmentationModel" and report.missing == []
    assert model.encoder.conv_in.in_channels == 12 and model.decoder.conv_out.out_channels == 12


def _global_step(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


def test_resumes_after_sigkill(scene_repo, tmp_path):
    root = make_scene_data(tmp_path, n_train=4, n_val=2, classes=2)
    params = _params(root, image={**TINY, "max_steps": 40, "val_every": 40, "ckpt_every": 2})
    cmd = TAMING + ["train-vqgan", "--model", "image", "--params", str(params)]
    resume = root / "data/vqgan/image/resume/last.ckpt"
    proc = subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if resume.is_file() and _global_step(resume) >= 4:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = _global_step(resume)
    assert 4 <= killed_at < 40 and not (root / "data/vqgan/image/checkpoints/last.ckpt").exists()

    rerun = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Restored all states from the checkpoint" in rerun.stdout + rerun.stderr
    assert _global_step(root / "data/vqgan/image/checkpoints/last.ckpt") == 40
    # the resumed run trained only the remaining steps: DVCLive's step axis continues
    steps = [int(line.split("\t")[0]) for line in
             (root / "data/vqgan/image/dvclive/plots/metrics/train/rec_loss.tsv").read_text().splitlines()[1:]]
    assert steps[0] >= killed_at - 2 and steps[-1] == 39


def test_changed_config_starts_fresh_instead_of_resuming(scene_repo, monkeypatch):
    from tasks.training.trainer import resume_checkpoint
    monkeypatch.chdir(scene_repo)
    out = Path("data/vqgan/fresh")
    a, b = vqgan_config("image", TINY), vqgan_config("image", {**TINY, "seed": 1})
    assert resume_checkpoint(out, a) is None
    (out / "resume/last.ckpt").write_bytes(b"state")
    assert resume_checkpoint(out, a) == out / "resume/last.ckpt"
    assert resume_checkpoint(out, b) is None and not (out / "resume/last.ckpt").exists()


def test_ddp_two_cpu_processes(scene_repo, tmp_path):
    root = make_scene_data(tmp_path, n_train=4, n_val=2, classes=2)
    params = _params(root, depth={**TINY, "devices": 2, "batch_size": 2, "max_steps": 3, "val_every": 3})
    done = subprocess.run(TAMING + ["train-vqgan", "--model", "depth", "--params", str(params)], cwd=root,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in done.stdout + done.stderr or "distributed_backend=gloo" in done.stdout + done.stderr
    ckpt = torch.load(root / "data/vqgan/depth/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["learning_rate"] == pytest.approx(1e-4 * 2 * 2)  # base x batch x devices


@pytest.mark.parametrize("section, message", [
    ({"ddconfig": {"ch": 48}}, "vqgan.image.ddconfig.ch: must be a positive multiple of 32"),
    ({"ddconfig": {"in_channels": 1}}, "vqgan.image.ddconfig.in_channels: is 1 but the image model needs 3"),
    ({"resolution": 30}, "vqgan.image.resolution: 30 must be divisible by the downsampling factor 4"),
    ({"n_embed": 70000}, "vqgan.image.n_embed: must be <= 65536"),
    ({"lr": 1.0}, "unknown parameter.*vqgan.image.lr"),
])
def test_invalid_parameters_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        vqgan_config("image", {**TINY, **section})


def test_unknown_model_names_the_configured_ones(tmp_path, capsys):
    params = _params(tmp_path, image=TINY)
    assert cli.main(["train-vqgan", "--model", "segmentation", "--params", str(params)]) == 2
    assert re.search(r"vqgan.segmentation: no such first-stage model.*configured: image", capsys.readouterr().err)
    assert isinstance(vqgan_config("image", TINY), VQGANConfig)
