"""Stage `sample`: the official-format D-RIN checkpoint (tiny, random weights) sampled
on real (tiny) validation images and depth maps, at the training size and above it."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from params_files import write_params
from PIL import Image

from models.packed_linear import precision_supported
from models.sampling_settings import SamplingSettings as SamplingParams
from tasks.config.params import validate
from tasks.config.schema import SampleConfig
from tasks.config.typed import ConfigError
from tasks.data.datasets import spread_indices
from tasks.data.formats import save_depth_png
from tasks.data.images import make_grid
from tasks.runtime.errors import StageError
from tasks.sample import run


def make_validation_data(root, classes=3, per_class=2, size=40):
    """data/{imagenet,depth}/validation + raw/synsets.json with random images and depth maps."""
    rng = np.random.default_rng(0)
    lines, synsets = [], {}
    for k in range(classes):
        synset = f"n{9000001 + k:08d}"
        synsets[synset] = {"index": k, "human": f"kind{k}"}
        for j in range(per_class):
            rel = f"{synset}/val_{k}_{j}.JPEG"
            path = root / "dataset" / "image" / "validation" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path, format="JPEG")
            depth = rng.uniform(0.1, 1.0, (size, size + 8)).astype(np.float32)
            save_depth_png(root / "dataset" / "depth" / "validation" / rel.replace(".JPEG", ".png"), depth)
            lines.append(rel)
    (root / "dataset" / "image" / "validation" / "filelist.txt").write_text("\n".join(sorted(lines)) + "\n")
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / "raw" / "synsets.json").write_text(json.dumps(synsets))
    return root


@pytest.fixture
def drin(reference_dir):
    return f"{reference_dir}/taming_small/drin_transformer"


def test_samples_grid_and_manifest(tmp_path, drin):
    data = make_validation_data(tmp_path / "data")
    cfg = SampleConfig(conditions=3, per_condition=2, batch_size=4, grid_conditions=2, seed=1)
    summary = run(cfg, SamplingParams(top_k=10), drin, data, tmp_path / "samples")
    assert summary["conditioning"] == "depth" and summary["samples"] == 6 and not summary["sliding_window"]
    images = sorted((tmp_path / "samples" / "images").glob("*.png"))
    assert [p.name for p in images] == [f"{i:05d}.png" for i in range(6)]
    assert Image.open(images[0]).size == (32, 32)
    manifest = json.loads((tmp_path / "samples" / "samples.json").read_text())
    # three conditionings spread over the classes, two samples each, in order
    assert [m["class_label"] for m in manifest["images"]] == [0, 0, 1, 1, 2, 2]
    assert manifest["top_k"] == 10 and manifest["settings"]["per_condition"] == 2
    # grid: 2 rows of depth | real | 2 samples, tiles of 96 px
    grid = Image.open(tmp_path / "samples" / "grid.png")
    assert grid.size == (4 + 4 * 100 + 12, 4 + 2 * 100)
    assert not list(tmp_path.glob(".tmp-*"))

    # same seed, same images; a rerun replaces the folder (no stale files)
    (tmp_path / "samples" / "images" / "99999.png").write_bytes(b"stale")
    run(cfg, SamplingParams(top_k=10), drin, data, tmp_path / "samples")
    again = sorted((tmp_path / "samples" / "images").glob("*.png"))
    assert [p.name for p in again] == [p.name for p in images]
    assert np.array_equal(np.asarray(Image.open(again[3])), np.asarray(Image.open(images[3])))


def test_the_weights_precision_is_a_sample_setting_and_recorded(tmp_path, drin):
    data = make_validation_data(tmp_path / "data")
    low = next((p for p in ("int8", "bfloat16") if precision_supported(p)), "float32")
    cfg = SampleConfig(conditions=2, per_condition=1, batch_size=2, grid_conditions=1, precision=low)
    summary = run(cfg, SamplingParams(top_k=10), drin, data, tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert summary["samples"] == 2 and manifest["precision"] == low and manifest["settings"]["precision"] == low
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 2


def test_depth_conditioning_is_used(tmp_path, drin):
    """Greedy-ish sampling (top_k=1) is a function of the condition: different depth maps
    give different images, the same depth map the same image."""
    data = make_validation_data(tmp_path / "data")
    cfg = SampleConfig(conditions=3, per_condition=2, batch_size=6, grid_conditions=1)
    run(cfg, SamplingParams(top_k=1), drin, data, tmp_path / "s")
    img = [np.asarray(Image.open(tmp_path / "s" / "images" / f"{i:05d}.png")) for i in range(6)]
    assert np.array_equal(img[0], img[1]) and np.array_equal(img[4], img[5])
    assert not np.array_equal(img[0], img[4])


def test_sliding_window_above_training_size(tmp_path, drin):
    data = make_validation_data(tmp_path / "data", classes=1, per_class=1, size=48)
    cfg = SampleConfig(conditions=1, per_condition=1, batch_size=1, resolution=48)
    summary = run(cfg, SamplingParams(top_k=5, top_p=0.9), drin, data, tmp_path / "s")
    assert summary["sliding_window"] and summary["resolution"] == 48
    assert Image.open(tmp_path / "s" / "images" / "00000.png").size == (48, 48)
    with pytest.raises(StageError, match="sample.resolution"):
        run(SampleConfig(resolution=42), SamplingParams(), drin, data, tmp_path / "s2")


def test_grid_shows_larger_sliding_window_samples_below_its_rows(tmp_path, drin):
    data = make_validation_data(tmp_path / "data", classes=2, per_class=1, size=48)
    cfg = SampleConfig(conditions=2, per_condition=2, batch_size=4, grid_conditions=2, seed=3)
    run(cfg, SamplingParams(top_k=5), drin, data, tmp_path / "plain")
    summary = run(SampleConfig(**{**cfg.__dict__, "large_resolution": 48}), SamplingParams(top_k=5), drin, data,
                  tmp_path / "s")
    assert summary["large"] == {"resolution": 48, "grid": [12, 12], "images": ["large/00000.png", "large/00001.png"]}
    for name in summary["large"]["images"]:
        assert Image.open(tmp_path / "s" / name).size == (48, 48)
    # the scored samples are the same as without: the large ones are extra and kept apart
    assert sorted(p.name for p in (tmp_path / "s" / "images").iterdir()) == ["00000.png", "00001.png",
                                                                            "00002.png", "00003.png"]
    for name in ("00000.png", "00003.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "s" / "images" / name)),
                              np.asarray(Image.open(tmp_path / "plain" / "images" / name)))
    plain, grid = (np.asarray(Image.open(tmp_path / d / "grid.png")) for d in ("plain", "s"))
    assert np.array_equal(grid[:plain.shape[0], :plain.shape[1]], plain)   # the usual grid on top
    assert grid.shape[0] >= plain.shape[0] + 2 * 96   # two rows of condition | real | sample, 96 px tiles


def test_conditions_spread_over_classes():
    labels = [0] * 4 + [1] * 4 + [2] * 4
    assert [labels[i] for i in spread_indices(labels, 3)] == [0, 1, 2]
    assert spread_indices(labels, 10, [1]) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"no item has the class labels \[7\]"):
        spread_indices(labels, 2, [7])


def test_make_grid_layout():
    tile = np.zeros((8, 8, 3), np.uint8)
    grid = make_grid([[tile, tile, tile], [None, tile, tile]], tile=8, lead=1, gap=2)
    assert grid.shape == (2 + 2 * 10, 2 + 3 * 10 + 6, 3)
    assert (grid[12:20, 2:10] == 255).all()      # the empty slot stays white


@pytest.mark.parametrize("override, key", [
    ("top_k=-1", "top_k"), ("top_p=1.5", "top_p"), ("top_p=0", "top_p"), ("temperature=0", "temperature"),
    ("sample.per_condition=0", "sample.per_condition"), ("sample.bogus=1", "sample.bogus"),
    ("sample.classes=[]", "sample.classes"),
])
def test_invalid_params_name_the_key(tmp_path, override, key):
    params = write_params(tmp_path / "params.yaml", top_k=100, top_p=None, temperature=1.0)
    assert validate(params).sampling == SamplingParams(top_k=100)
    with pytest.raises(ConfigError, match=key):
        validate(params, [override])
    # the command line fails before any work, naming the key (exit code 2)
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "sample", "--params", str(params), "-S", override,
                           "--transformer", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and key in proc.stderr


@pytest.mark.parametrize("cond_key, cond_config", [
    ("class_label", {"target": "taming.modules.util.Labelator", "params": {"n_classes": 3}}),
    ("image", "__is_unconditional__"),
])
def test_class_conditional_and_unconditional_models(tmp_path, drin, cond_key, cond_config):
    """The D-RIN weights re-read as a class-conditional / unconditional model (the GPT does not
    care what its prefix tokens mean): rows show the real image, then the samples."""
    import yaml

    folder = tmp_path / "model"
    shutil.copytree(drin, folder)
    config_path = next((folder / "configs").glob("*.yaml"))
    config = yaml.safe_load(config_path.read_text())
    config["model"]["params"].update(cond_stage_key=cond_key, cond_stage_config=cond_config)
    config_path.write_text(yaml.safe_dump(config))
    data = make_validation_data(tmp_path / "data")
    cfg = SampleConfig(conditions=3, per_condition=1, batch_size=3, grid_conditions=3)
    with pytest.warns(UserWarning, match="unexpected key"):   # the depth VQGAN's weights are not used
        summary = run(cfg, SamplingParams(top_k=4), folder, data, tmp_path / "s")
    assert summary["conditioning"] == ("class_label" if cond_key == "class_label" else "none")
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.size == (4 + 2 * 100 + 12, 4 + 3 * 100)   # real image | one sample
