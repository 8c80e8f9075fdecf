"""Stages depth and segment end to end on a few real (rendered) JPEGs: ground truth, MiDaS
and DeepLab with random weights, sharding, resuming after SIGKILL, clear errors."""
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from params_files import with_conditioning, write_params
from PIL import Image
from reference_weights import fill_reference

from models import deeplab, midas
from tasks import cli
from tasks.annotate import run
from tasks.config.schema import DepthConfig, SegmentConfig
from tasks.config.typed import ConfigError
from tasks.data import annotation as annotate
from tasks.data import scenes
from tasks.data.files import is_temp
from tasks.data.formats import load_depth_png, load_label_png, save_depth_png, save_label_png

REPO = Path(__file__).resolve().parents[1]


def run_depth(cfg):
    return run("depth", cfg)


def run_segment(cfg):
    return run("segmentation", cfg)


def make_dataset(root: Path, n_train: int = 3, n_val: int = 2, resolution: int = 32) -> Path:
    """data/dataset/image/<split>/<synset>/<name>.JPEG + filelist.txt + demo ground truth."""
    data = root / "data"
    for split_index, split in enumerate(["train", "validation"]):
        rels = []
        for kind in range(2):
            synset = scenes.KINDS[kind].synset
            for i in range(n_train if split == "train" else n_val):
                r = scenes.render(scenes.scene_for(0, split_index, kind, i), resolution)
                image, depth, seg = r.image, r.inverse_depth, r.segmentation
                if i == 0:  # one narrower image per class: batches must group by size
                    image, depth, seg = image[:, 4:-4], depth[:, 4:-4], seg[:, 4:-4]
                rel = f"{synset}/{synset}_{split}_{i}.JPEG"
                path = data / "dataset" / "image" / split / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.ascontiguousarray(image)).save(path, quality=95)
                stem = Path(rel).stem
                save_depth_png(data / "raw/groundtruth/depth" / f"{stem}.png", np.ascontiguousarray(depth))
                save_label_png(data / "raw/groundtruth/segmentation" / f"{stem}.png", np.ascontiguousarray(seg))
                rels.append(rel)
        (data / "dataset" / "image" / split / "filelist.txt").write_text("".join(f"{r}\n" for r in sorted(rels)))
    return data


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "midas_small_random.pt"
    torch.save(fill_reference(midas.MidasNet_small()).state_dict(), path)
    return path


def filelist(data: Path, split: str) -> list[str]:
    return (data / "dataset" / "image" / split / "filelist.txt").read_text().split()


def outputs(data: Path, kind: str) -> dict[str, bytes]:
    root = data / "dataset" / kind
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png")) if not is_temp(p)}


def test_groundtruth_stages_reproduce_the_exact_maps_and_resume(data):
    counts = run_depth(DepthConfig(data_dir=data, batch_size=2, num_workers=0))
    assert counts == {"train": {"images": 6, "written": 6, "already_done": 0},
                      "validation": {"images": 4, "written": 4, "already_done": 0}}
    run_segment(SegmentConfig(data_dir=data, batch_size=2, num_workers=0))
    for split in ["train", "validation"]:
        for rel in filelist(data, split):
            stem = Path(rel).stem
            got = load_depth_png(annotate.output_path(data, "depth", split, rel))
            want = load_depth_png(data / "raw/groundtruth/depth" / f"{stem}.png")
            assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
            got = load_label_png(annotate.output_path(data, "segmentation", split, rel))
            assert np.array_equal(got, load_label_png(data / "raw/groundtruth/segmentation" / f"{stem}.png"))
    again = run_depth(DepthConfig(data_dir=data, num_workers=0, splits=["validation"]))
    assert again == {"validation": {"images": 4, "written": 0, "already_done": 4}}


def test_shards_split_the_work_and_together_equal_one_run(data, tmp_path):
    whole = make_dataset(tmp_path / "whole")
    run_depth(DepthConfig(data_dir=whole, num_workers=0, splits=["train"]))
    written = [run_depth(DepthConfig(data_dir=data, num_workers=0, splits=["train"], shard=i, num_shards=2))
               ["train"]["written"] for i in range(2)]
    assert written == [3, 3]
    assert outputs(data, "depth") == outputs(whole, "depth")


def test_midas_small_random_weights_through_the_stage(data, small_weights):
    cfg = DepthConfig(model="midas_v21_small", weights=small_weights, data_dir=data, batch_size=2,
                      num_workers=1, splits=["validation"], device="cpu")
    assert run_depth(cfg)["validation"]["written"] == 4
    model = midas.load_midas("midas_v21_small", small_weights)
    for rel in filelist(data, "validation"):
        image = annotate.load_image(data, "validation", rel)
        depth = load_depth_png(annotate.output_path(data, "depth", "validation", rel))
        assert depth.shape == image.shape[1:] and np.isfinite(depth).all()
        np.testing.assert_allclose(depth, midas.predict(model, [image])[0].numpy(), rtol=1e-4, atol=1e-5)


def test_deeplab_random_weights_through_the_stage(data, tmp_path):
    weights = tmp_path / "deeplab_random.pth"
    model = fill_reference(deeplab.deeplabv2_cocostuff())
    torch.save(model.state_dict(), weights)
    cfg = SegmentConfig(model="deeplabv2_cocostuff", weights=weights, data_dir=data, batch_size=3,
                        num_workers=0, splits=["train"])
    assert run_segment(cfg)["train"]["written"] == 6
    for rel in filelist(data, "train"):
        image = annotate.load_image(data, "train", rel)
        labels = load_label_png(annotate.output_path(data, "segmentation", "train", rel))
        assert labels.shape == image.shape[1:] and labels.max() < deeplab.N_CLASSES
        alone = deeplab.segment(model, image[None])[0].numpy()
        assert (labels == alone).mean() > 0.99  # argmax ties aside, batching changes nothing


def test_sigkilled_stage_resumes_and_ends_identical(data, tmp_path, small_weights):
    settings = {"model": "midas_v21_small", "weights": small_weights, "batch_size": 2, "num_workers": 0,
                "device": "cpu", "splits": ["train"]}
    uninterrupted = make_dataset(tmp_path / "uninterrupted")
    run_depth(DepthConfig(data_dir=uninterrupted, **settings))
    expected = outputs(uninterrupted, "depth")
    assert len(expected) == 6

    params = write_params(tmp_path / "params.yaml",
                          annotate={"depth": {**settings, "weights": str(small_weights), "data_dir": str(data)}})
    stage = [sys.executable, "-m", "tasks.cli", "annotate", "--kind", "depth", "--params", str(params)]
    proc = subprocess.Popen(stage, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not outputs(data, "depth"):
        assert proc.poll() is None and time.time() < deadline, "stage ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = outputs(data, "depth")
    assert 0 < len(partial) < 6
    assert all(expected[k] == v for k, v in partial.items())  # what exists is complete

    resumed = subprocess.run(stage, cwd=REPO, check=True, capture_output=True, text=True)
    assert f"{6 - len(partial)} written" in resumed.stdout
    assert outputs(data, "depth") == expected


PAUSED_SHARD = """
import sys, time
from pathlib import Path
from tasks import cli
from tasks.data import annotation
flag, release = Path(sys.argv[1]), Path(sys.argv[2])
original = annotation.Annotator.save
def save(self, path, output):
    original(self, path, output)
    flag.write_text("now")
    while not release.exists():     # hold still with the lock until the test releases us
        time.sleep(0.05)
annotation.Annotator.save = save
sys.exit(cli.main(sys.argv[3:]))
"""


def test_shards_run_concurrently_and_a_duplicate_shard_is_refused(data, tmp_path, capsys):
    whole = make_dataset(tmp_path / "whole")
    run_depth(DepthConfig(data_dir=whole, num_workers=0, splits=["train"]))
    params = write_params(tmp_path / "params.yaml", annotate={"depth": {"data_dir": str(data), "num_workers": 0,
                                                                        "batch_size": 1, "splits": ["train"]}})
    stage = ["annotate", "--kind", "depth", "--params", str(params), "--num-shards", "2"]
    flag, release = tmp_path / "flag", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_SHARD, str(flag), str(release), *stage, "--shard", "0"],
                             cwd=REPO)
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert first.poll() is None and time.time() < deadline, "shard 0 ended before its pause"
            time.sleep(0.05)
        assert cli.main([*stage, "--shard", "1"]) == 0          # another shard runs alongside
        assert cli.main([*stage, "--shard", "0"]) == 1          # the same shard twice does not
        err = capsys.readouterr().err
        assert f"is being written by another run: pid {first.pid} on " in err and "shard-0-of-2" in err
    finally:
        release.write_text("go")
        assert first.wait(timeout=300) == 0
    assert outputs(data, "depth") == outputs(whole, "depth")


def test_bad_inputs_are_named(data):
    (data / "raw/groundtruth/depth" / f"{Path(filelist(data, 'validation')[0]).stem}.png").unlink()
    with pytest.raises(FileNotFoundError, match="no ground-truth depth"):
        run_depth(DepthConfig(data_dir=data, num_workers=0, splits=["validation"]))
    rel = filelist(data, "train")[1]
    (data / "dataset/image/train" / rel).write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=f"{rel}: cannot read image"):
        run_segment(SegmentConfig(data_dir=data, num_workers=0, splits=["train"]))
    shutil.rmtree(data / "dataset/image/validation")
    with pytest.raises(FileNotFoundError, match="filelist.txt: missing"):
        run_segment(SegmentConfig(data_dir=data, num_workers=0, splits=["validation"]))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="shard"):
        DepthConfig(shard=2, num_shards=2)
    with pytest.raises(ConfigError, match="weights"):
        SegmentConfig(weights=Path("x.pth"))
    with pytest.raises(ConfigError, match="device"):
        DepthConfig(device="tpu")


def test_cli_runs_a_shard_and_reports_missing_weights_offline(data, tmp_path, monkeypatch, capsys):
    params = write_params(tmp_path / "params.yaml", annotate={"depth": {"data_dir": str(data), "num_workers": 0}})
    depth = ["annotate", "--kind", "depth", "--params", str(params)]
    assert cli.main([*depth, "--split", "validation", "--shard", "1", "--num-shards", "2"]) == 0
    assert len(outputs(data, "depth")) == 2
    assert cli.main([*depth, "--shard", "2", "--num-shards", "2"]) == 2  # ConfigError
    # a map kind the conditioning does not read is not configured: refused, naming it
    assert cli.main(["annotate", "--kind", "segmentation", "--params", str(params)]) == 2
    assert "annotate.segmentation: not configured; conditioning depth reads depth" in capsys.readouterr().err

    segmentation = with_conditioning(yaml.safe_load(params.read_text()), "segmentation",
                                     {"data_dir": str(data), "model": "deeplabv2_cocostuff"})
    params.write_text(yaml.safe_dump(segmentation))

    monkeypatch.setenv("TAMING_OFFLINE", "1")
    monkeypatch.setenv("TAMING_WEIGHTS_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("TAMING_WEIGHTS_S3", raising=False)
    capsys.readouterr()
    assert cli.main(["annotate", "--kind", "segmentation", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "deeplabv2_resnet101_msc-cocostuff164k-100000.pth" in err and "taming weights import" in err
