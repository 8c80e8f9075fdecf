"""train-vqgan on a tiny real dataset: learning, outputs in the original layout, resume after
SIGKILL, DDP with two gloo processes, segmentation one-hot input, config validation."""
import json
import os
import re
import shutil
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
from scene_data import make_scene_data
from training_runs import differing_tensors, history, run_stage

from models.pretrained import load_with_report
from tasks import cli
from tasks.config.params import vqgan_config
from tasks.config.schema import VQGANConfig
from tasks.config.typed import ConfigError
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
    conditioning = "depth" if "depth" in models and image_model != "depth" else "none"
    annotate = {"depth": {"model": "groundtruth"}} if conditioning == "depth" else {}
    (root / "params.yaml").write_text(yaml.safe_dump({"conditioning": conditioning, "annotate": annotate,
                                                      "vqgan": models, "tokenize": {"image_model": image_model},
                                                      "evaluate": {"resolution": models[image_model]["resolution"]}}))
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
    # after success the scratch state is only the continuation point: the final checkpoint, linked
    assert sorted(p.name for p in (folder / "resume").iterdir()) == ["dvclive", "fingerprint.json", "last.ckpt"]
    assert (folder / "resume/last.ckpt").samefile(folder / "checkpoints/last.ckpt")

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

    metrics = json.loads((scene_repo / "data/dvclive/vqgan/depth/metrics.json").read_text())
    assert 0 < metrics["val"]["codebook_usage"] <= 1 and metrics["val"]["perplexity"] >= 1
    assert (scene_repo / "data/dvclive/vqgan/depth/plots/metrics/train/rec_loss.tsv").is_file()
    grids = sorted((scene_repo / "data/dvclive/vqgan/depth/plots/images/reconstructions").glob("*.png"))
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
             (root / "data/dvclive/vqgan/image/plots/metrics/train/rec_loss.tsv").read_text().splitlines()[1:]]
    assert steps[0] >= killed_at - 2 and steps[-1] == 39


def test_changed_config_or_inputs_start_fresh_saying_why(scene_repo, monkeypatch, capsys):
    from tasks.training.trainer import resume_checkpoint
    monkeypatch.chdir(scene_repo)
    out, logs = Path("data/vqgan/fresh"), Path("data/dvclive/vqgan/fresh")
    a, b = vqgan_config("image", TINY), vqgan_config("image", {**TINY, "seed": 1})
    inputs = {"train images": "1" * 64, "synsets.json": "2" * 64}
    assert resume_checkpoint(out, logs, a, inputs, "stage") is None
    (out / "resume/last.ckpt").write_bytes(b"state")
    assert resume_checkpoint(out, logs, a, inputs, "stage") == out / "resume/last.ckpt"
    assert resume_checkpoint(out, logs, b, inputs, "stage") is None and not (out / "resume/last.ckpt").exists()
    assert "stage: not resuming from data/vqgan/fresh/resume/last.ckpt: the parameters changed (seed)" in \
        capsys.readouterr().out
    (out / "resume/last.ckpt").write_bytes(b"state")
    assert resume_checkpoint(out, logs, b, {**inputs, "train images": "3" * 64}, "stage") is None
    assert "its inputs changed (train images) since it was written" in capsys.readouterr().out


RESUMABLE = {**TINY, "max_steps": 8, "val_every": 4, "ckpt_every": 2, "loss": {**TINY["loss"], "disc_start": 3}}


def test_a_run_killed_and_resumed_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    """Data order, random crops (drawn per batch from the seed) and the RNG all continue
    exactly; the GAN's two optimisers count two global steps per update."""
    root = make_scene_data(tmp_path, n_train=4, n_val=2, classes=2)
    params = _params(root, image=RESUMABLE)
    stage = ("train-vqgan", "--model", "image", "--params", str(params))
    folder = root / "data/vqgan/image"
    run_stage(root, *stage)
    logs = root / "data/dvclive/vqgan/image"
    shutil.move(folder, root / "uninterrupted")
    shutil.move(logs, root / "uninterrupted-dvclive")

    run_stage(root, *stage, kill_at_step=2 * 5)          # after update 5; the last checkpoint is at 4
    assert _global_step(folder / "resume/last.ckpt") == 4
    rerun = run_stage(root, *stage)
    assert "Restored all states" in rerun.stdout + rerun.stderr
    assert differing_tensors(root / "uninterrupted/checkpoints/last.ckpt", folder / "checkpoints/last.ckpt") == []
    assert history(logs) == history(root / "uninterrupted-dvclive")
    assert sorted(p.name for p in (logs / "plots/images/reconstructions").glob("*.png")) == \
        ["000004.png", "000008.png"]


def test_a_killed_run_whose_images_changed_starts_afresh_saying_why(tmp_path):
    """It used to resume from a checkpoint trained on the old images."""
    root = make_scene_data(tmp_path, n_train=4, n_val=2, classes=2)
    params = _params(root, image=RESUMABLE)
    stage = ("train-vqgan", "--model", "image", "--params", str(params))
    run_stage(root, *stage, kill_at_step=2 * 5)
    image = root / "data/dataset/image/train" / (root / "data/dataset/image/train/filelist.txt").read_text().split()[0]
    Image.open(image).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(image)      # same name, other pixels
    log = run_stage(root, *stage)
    log = log.stdout + log.stderr
    assert ("train-vqgan image: not resuming from data/vqgan/image/resume/last.ckpt: its inputs changed "
            "(train images) since it was written; starting afresh") in log
    assert "Restored all states" not in log and _global_step(root / "data/vqgan/image/checkpoints/last.ckpt") == 8


def test_raising_max_steps_continues_a_finished_run_bit_for_bit(tmp_path):
    """A finished run of 4 updates continued to 8, after DVC deleted its outputs as it does
    before rerunning a stage, equals a run of 8; it used to start over."""
    root = make_scene_data(tmp_path, n_train=4, n_val=2, classes=2)
    folder, logs = root / "data/vqgan/image", root / "data/dvclive/vqgan/image"
    stage = ("train-vqgan", "--model", "image", "--params", str(root / "params.yaml"))
    _params(root, image=RESUMABLE)
    run_stage(root, *stage)
    shutil.move(folder, root / "uninterrupted")
    shutil.move(logs, root / "uninterrupted-dvclive")

    _params(root, image={**RESUMABLE, "max_steps": 4})
    run_stage(root, *stage)
    os.link(folder / "checkpoints/last.ckpt", root / "cached.ckpt")    # as DVC's hardlink cache would
    four_steps = (root / "cached.ckpt").read_bytes()
    shutil.rmtree(folder / "checkpoints")
    shutil.rmtree(logs)
    _params(root, image=RESUMABLE)
    log = run_stage(root, *stage)
    assert "train-vqgan image: continuing the finished run from step 4 to 8" in log.stdout
    assert "Restored all states" in log.stdout + log.stderr
    assert differing_tensors(root / "uninterrupted/checkpoints/last.ckpt", folder / "checkpoints/last.ckpt") == []
    assert history(logs) == history(root / "uninterrupted-dvclive")
    assert (root / "cached.ckpt").read_bytes() == four_steps       # no checkpoint was written into the link

    # the same max_steps again (`dvc repro -f`) trains afresh; other settings too
    log = run_stage(root, *stage)
    assert ("train-vqgan image: not continuing from data/vqgan/image/resume/last.ckpt: max_steps 8 is not above "
            "the 8 it finished at; starting afresh") in log.stdout
    assert "Restored all states" not in log.stdout + log.stderr
    _params(root, image={**RESUMABLE, "max_steps": 10, "seed": 1})
    log = run_stage(root, *stage)
    assert "not continuing from data/vqgan/image/resume/last.ckpt: the parameters changed (max_steps, seed)" in \
        log.stdout
    assert "Restored all states" not in log.stdout + log.stderr


def test_a_non_finite_loss_stops_training_naming_the_stage_step_and_value(scene_repo, monkeypatch):
    """A learning rate of 1e30 used to finish with rc=0 and NaN weights."""
    from tasks.training.trainer import NonFiniteError
    monkeypatch.chdir(scene_repo)
    cfg = vqgan_config("image", {**TINY, "base_learning_rate": 1e30, "max_steps": 6, "ckpt_every": 1})
    with pytest.raises(NonFiniteError, match=r"train-vqgan image: (the [a-z ]+ is (nan|-?inf)|parameter \S+ holds "
                                             r"(nan|-?inf)) at step \d of 6; training stopped"):
        run(cfg)
    folder = scene_repo / "data/vqgan/image"
    assert not (folder / "checkpoints/last.ckpt").exists()
    kept = torch.load(folder / "resume/last.ckpt", weights_only=True)        # the last finite state
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values() if t.is_floating_point())


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
