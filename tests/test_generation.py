"""Sampling model folders without the pipeline (`taming sample-model`, tasks/generation) and
`taming reconstruct`: the reference D-RIN folder (depth maps in every accepted format,
photos, completion, non-square sizes, determinism, streaming), and small class-conditional,
unconditional and segmentation-conditioned models trained here by the pipeline's own
stages on rendered scenes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from reference_weights import fill_reference
from scene_data import make_scene_data

from models import midas
from models.packed_linear import precision_supported
from models.sampling import generate_sliding_window
from models.sampling_settings import SamplingSettings as S
from tasks import cli
from tasks.config.params import vqgan_config
from tasks.config.schema import SAMPLING_KEYS, TokenizeConfig, TransformerConfig
from tasks.config.typed import build
from tasks.data.formats import save_depth_png, save_label_png
from tasks.generation import conditions as cond
from tasks.generation.model import SamplingModel
from tasks.generation.tokens import sample_tokens

REPO = Path(__file__).resolve().parents[1]
VQ = {"resolution": 32, "n_embed": 32, "embed_dim": 8, "batch_size": 4, "max_steps": 2, "val_every": 2,
      "ckpt_every": 2, "n_classes": 12, "ddconfig": {"z_channels": 8, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1},
      "loss": {"perceptual_weight": 0.0, "disc_start": 100, "disc_ndf": 8}}
GPT = {"n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 4, "max_steps": 4, "val_every": 4, "ckpt_every": 4,
       "warmup_steps": 1}


def taming(*args: str) -> int:
    return cli.main(["sample-model", *map(str, args)])


def pictures(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def drin(reference_dir):
    return Path(reference_dir) / "taming_small" / "drin_transformer"


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """One depth map in each accepted format, a photo, and an RGB file that is no depth map."""
    root = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.1, 1.0, 40, dtype=np.float32)[:, None] * np.ones((1, 56), np.float32)
    save_depth_png(root / "float.png", ramp + rng.uniform(0, 0.05, ramp.shape).astype(np.float32))
    Image.fromarray((ramp * 255).astype(np.uint8)).save(root / "grey8.png")
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(root / "grey16.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Class-conditional (trained with condition dropout), unconditional and segmentation-
    conditioned transformers, made by the pipeline's stages on rendered scenes (4 steps each)."""
    from tasks import tokenize_images, train_transformer
    from tasks.train_vqgan import run as train_vqgan

    root = make_scene_data(tmp_path_factory.mktemp("trained"), n_train=3, n_val=1, classes=2)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name in ("image", "depth", "segmentation"):
            train_vqgan(vqgan_config(name, VQ))
        for conditioning, dropout in (("class", 0.5), ("none", 0.0), ("segmentation", 0.0)):
            tokenize_images.run(build(TokenizeConfig, {"hflip": False, "rows_per_part": 8}, "tokenize"),
                                conditioning)
            train_transformer.run(build(TransformerConfig, {**GPT, "label_dropout": dropout}, "transformer"))
            shutil.move("data/transformer", f"models/{conditioning}")
            shutil.rmtree("data/tokens")
    finally:
        os.chdir(cwd)
    return root


# ----------------------------------------------------------------------------- the reference D-RIN folder

def test_depth_maps_in_every_format_and_the_npz(tmp_path, drin, maps):
    out = tmp_path / "out"
    assert taming(drin, "--maps", maps / "float.png", maps / "grey8.png", maps / "grey16.png", "-n", 3,
                  "--batch-size", 4, "-k", 10, "--npz", "-o", out) == 0
    got = pictures(out)
    assert sorted(got) == [f"{m}/{k:06d}.png" for m in ("float", "grey16", "grey8") for k in range(3)]
    assert all(p.shape == (32, 32, 3) for p in got.values())
    # grey 8 and 16 bit of the same ramp normalise to (nearly) the same map: the same condition tokens
    model = SamplingModel.open(drin)
    tokens = {m: cond.map_condition(model, maps / f"{m}.png", (32, 32)).tokens for m in ("grey8", "grey16")}
    assert (tokens["grey8"] == tokens["grey16"]).float().mean() > 0.9
    with np.load(out / "samples.npz") as npz:
        assert npz.files == ["arr_0"] and npz["arr_0"].shape == (9, 32, 32, 3)
        np.testing.assert_array_equal(npz["arr_0"][3], got["grey8/000000.png"])   # in condition order
    summary = json.loads((out / "samples.json").read_text())
    assert summary["conditions"] == ["float", "grey8", "grey16"] and summary["top_k"] == 10
    assert summary["samples"] == 9 and summary["device"] == "cpu" and not summary["sliding_window"]


def test_a_fixed_seed_gives_the_same_images(tmp_path, drin, maps):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert taming(drin, "--maps", maps / "float.png", "-n", 4, "--seed", seed, "-o", tmp_path / name) == 0
        runs[name] = pictures(tmp_path / name)
    assert all(np.array_equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(np.array_equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_a_non_square_output_from_the_square_trained_model(tmp_path, drin, maps):
    """2:1 landscape (and portrait) by sliding-window sampling; the map is fitted to it."""
    assert taming(drin, "--maps", maps / "float.png", "-n", 1, "--resolution", "64x32", "-o", tmp_path / "w") == 0
    assert Image.open(tmp_path / "w" / "float" / "000000.png").size == (64, 32)
    assert json.loads((tmp_path / "w" / "samples.json").read_text())["sliding_window"]
    assert taming(drin, "--maps", maps / "float.png", "-n", 1, "--resolution", "32x48", "-o", tmp_path / "p") == 0
    assert Image.open(tmp_path / "p" / "float" / "000000.png").size == (32, 48)


def test_completion_keeps_the_top_rows(drin, maps):
    """The kept rows are the image's own tokens; the rest is sampled (and differs per seed),
    on the training grid (KV cache) and on a larger one (sliding window)."""
    model = SamplingModel.open(drin)
    rgb = np.asarray(Image.open(maps / "photo.png"))
    for hw in ((32, 32), (32, 48)):
        grid = model.grid(*hw)
        c = cond.map_condition(model, maps / "float.png", hw).tokens
        image = cond.completion_tokens(model, rgb, hw)
        start = cond.keep_token_rows(model, grid, fraction=0.5) * grid[1]
        assert start == grid[0] // 2 * grid[1]
        z = [sample_tokens(model, c, 1, grid, S(top_k=20), model.generator(seed), image, start) for seed in (0, 1)]
        assert torch.equal(z[0][:, :start], image[:, :start]) and torch.equal(z[1][:, :start], image[:, :start])
        assert not torch.equal(z[0][:, start:], z[1][:, start:])


def test_completion_through_the_command(tmp_path, drin, maps):
    assert taming(drin, "--maps", maps / "float.png", "-n", 2, "--complete", maps / "photo.png",
                  "--keep-rows", 12, "-o", tmp_path / "c") == 0
    summary = json.loads((tmp_path / "c" / "samples.json").read_text())
    assert summary["completion"]["kept_token_rows"] == 3   # 12 px of 4-px token rows
    assert len(pictures(tmp_path / "c")) == 2


def test_previews_show_the_grid_while_it_fills(drin, maps):
    """The app's redraws: chunks of rows on the KV-cache path; the same tokens come out as
    one uninterrupted run when the draws are greedy."""
    model = SamplingModel.open(drin)
    c = cond.map_condition(model, maps / "float.png", (32, 32)).tokens
    seen = []
    z = sample_tokens(model, c, 1, (8, 8), S(greedy=True), preview=lambda z, done: seen.append(done),
                      preview_every=16)
    assert seen == [16, 32, 48, 64]
    assert torch.equal(z, sample_tokens(model, c, 1, (8, 8), S(greedy=True)))


def test_photos_are_annotated_on_the_fly(tmp_path, drin, maps):
    """With MiDaS weights (here the small architecture with the reference fill) a photo
    becomes a depth map; without weights the error says how to fetch them."""
    weights = tmp_path / "midas_small.pt"
    torch.save(fill_reference(midas.MidasNet_small()).state_dict(), weights)
    assert taming(drin, "--photos", maps / "photo.png", "--annotator", "midas_v21_small",
                  "--annotator-weights", weights, "-n", 1, "-o", tmp_path / "ph") == 0
    assert list(pictures(tmp_path / "ph")) == ["photo/000000.png"]
    env = {**os.environ, "TAMING_OFFLINE": "1", "TAMING_WEIGHTS_DIR": str(tmp_path / "empty"),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "sample-model", str(drin), "--photos",
                           str(maps / "photo.png"), "-o", str(tmp_path / "none")], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 1 and "taming weights fetch midas_v21" in proc.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("args, message", [
    (["--classes", "1"], "conditioned on depth: give it --maps or --photos, not --classes"),
    ([], "give --maps (map files) or --photos"),
    (["--maps", "{maps}/photo.png"], "a depth map is an RGBA float32 PNG"),
    (["--maps", "{maps}/float.png", "--resolution", "30"], "multiples of 4"),
    (["--maps", "{maps}/float.png", "--resolution", "16"], "at least the training size 32"),
    (["--maps", "{maps}/float.png", "--guidance-scale", "2"], "not trained with condition dropout"),
    (["--maps", "{maps}/float.png", "-p", "1.5"], "--top-p"),
    (["--maps", "{maps}/float.png", "--complete", "{maps}/photo.png"], "--keep-rows PIXELS or --keep-fraction"),
    (["--maps", "{maps}/float.png", "--complete", "{maps}/photo.png", "--keep-rows", "32"], "no row to sample"),
    (["--maps", "{maps}/missing.png"], "no such file"),
])
def test_bad_requests_are_named(tmp_path, drin, maps, capsys, args, message):
    args = [a.format(maps=maps) for a in args]
    assert taming(drin, *args, "-o", tmp_path / "x") == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_output_is_streamed_batch_by_batch(tmp_path, drin, maps, monkeypatch):
    """Each batch is on disk before the next is sampled; an interrupted run leaves whole
    PNGs of the finished batches and no .npz (it appears only when complete)."""
    from tasks.generation import tokens

    calls = []
    real = tokens.sample_tokens

    def interrupted_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens, "sample_tokens", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        taming(drin, "--maps", maps / "float.png", "-n", 10, "--batch-size", 3, "--npz", "-o", tmp_path / "s")
    assert sorted(pictures(tmp_path / "s")) == [f"float/{k:06d}.png" for k in range(6)]
    assert not list((tmp_path / "s").glob("*.npz")) and not list((tmp_path / "s").glob(".tmp-*"))


def peak_rss_mb(*args: str) -> float:
    """Peak resident memory of `taming sample-model ARGS` in its own process (wait4's ru_maxrss)."""
    proc = subprocess.Popen([sys.executable, "-m", "tasks.cli", "sample-model", *args],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024


def test_memory_does_not_grow_with_the_number_of_samples(tmp_path, drin, maps):
    base = [str(drin), "--maps", str(maps / "float.png"), "--batch-size", "8", "--resolution", "48", "--npz"]
    small = peak_rss_mb(*base, "-n", "4", "-o", str(tmp_path / "small"))
    large = peak_rss_mb(*base, "-n", "40", "-o", str(tmp_path / "large"))
    assert len(pictures(tmp_path / "large")) == 40
    assert large < small * 1.10, (small, large)


# ----------------------------------------------------------------------------- models trained here

def test_class_conditional_folders_per_class_and_labels(tmp_path, trained):
    out = tmp_path / "cls"
    assert taming(trained / "models/class", "-n", 3, "--classes", "1,0", "-k", 8, "-p", 0.92, "-t", 1.0,
                  "--batch-size", 2, "--npz", "-o", out) == 0
    assert sorted(pictures(out)) == [f"{c}/{k:06d}.png" for c in (0, 1) for k in range(3)]
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_1"].tolist() == [0, 0, 0, 1, 1, 1] and npz["arr_0"].shape == (6, 32, 32, 3)
    assert taming(trained / "models/class", "-n", 1, "--classes", "5", "-o", tmp_path / "bad") == 1
    # default: every class the model knows
    assert taming(trained / "models/class", "-n", 1, "-o", tmp_path / "all") == 0
    assert sorted(pictures(tmp_path / "all")) == ["0/000000.png", "1/000000.png"]


def test_unconditional_samples_and_a_landscape(tmp_path, trained):
    assert taming(trained / "models/none", "-n", 3, "-o", tmp_path / "u") == 0
    assert sorted(pictures(tmp_path / "u")) == [f"{k:06d}.png" for k in range(3)]
    assert taming(trained / "models/none", "-n", 1, "--resolution", "64x32", "-o", tmp_path / "wide") == 0
    assert Image.open(tmp_path / "wide" / "000000.png").size == (64, 32)
    assert taming(trained / "models/none", "--classes", "1", "-o", tmp_path / "no") == 1
    low = next((p for p in ("int8", "bfloat16") if precision_supported(p)), "float32")
    assert taming(trained / "models/none", "-n", 2, "--precision", low, "-o", tmp_path / "low") == 0
    assert json.loads((tmp_path / "low" / "samples.json").read_text())["precision"] == low
    assert len(pictures(tmp_path / "low")) == 2


def test_segmentation_maps(tmp_path, trained, capsys):
    labels = next((trained / "data/dataset/segmentation/validation").rglob("*.png"))
    assert taming(trained / "models/segmentation", "--maps", labels, "-n", 2, "-o", tmp_path / "s") == 0
    assert sorted(pictures(tmp_path / "s")) == [f"{labels.stem}/{k:06d}.png" for k in range(2)]
    wrong = tmp_path / "wrong.png"
    save_label_png(wrong, np.full((32, 32), 40, np.uint8))   # the VQGAN one-hot encodes 12 labels
    assert taming(trained / "models/segmentation", "--maps", wrong, "-o", tmp_path / "w") == 1
    assert "label id 40 is outside the 12 labels" in capsys.readouterr().err


def test_guidance_with_a_null_token(trained):
    """Classifier-free guidance on both samplers: scale 1 is plain conditional sampling,
    another scale changes the draws. The class model was trained with condition dropout, so
    its saved config records the null token (the first id after the classes) and guidance
    works after reloading it; the unconditional one was not, and cannot guide."""
    model = SamplingModel.open(trained / "models/class")
    assert model.can_guide and model.net.null_token == model.n_classes
    assert not SamplingModel.open(trained / "models/none").can_guide
    c = cond.class_condition(model, 1).tokens
    for grid in ((8, 8), (8, 12)):
        plain = sample_tokens(model, c, 1, grid, S(top_k=8), model.generator(0))
        same = sample_tokens(model, c, 1, grid, S(top_k=8, guidance_scale=1.0), model.generator(0))
        guided = sample_tokens(model, c, 1, grid, S(greedy=True, guidance_scale=4.0), model.generator(0))
        assert torch.equal(plain, same)
        assert not torch.equal(guided, sample_tokens(model, c, 1, grid, S(greedy=True), model.generator(0)))


def test_sliding_window_guidance_and_stop():
    """generate_sliding_window: guidance against uncond_c (scale 1 changes nothing), and
    `stop` samples only positions [start, stop)."""
    from models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, block_size=40, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        gpt.head.weight.normal_(std=0.3)
    c, null = torch.randint(0, 50, (2, 5, 6)), torch.full((2, 5, 6), 49)
    z0 = torch.zeros(2, 5, 6, dtype=torch.long)
    plain = generate_sliding_window(gpt, c, z0, (4, 4), S(greedy=True))
    assert torch.equal(plain, generate_sliding_window(gpt, c, z0, (4, 4), S(greedy=True, guidance_scale=1.0),
                                                      uncond_c=null))
    assert not torch.equal(plain, generate_sliding_window(gpt, c, z0, (4, 4), S(greedy=True, guidance_scale=5.0),
                                                          uncond_c=null))
    with pytest.raises(ValueError, match="needs uncond_c"):
        generate_sliding_window(gpt, c, z0, (4, 4), S(guidance_scale=2.0))
    kept = plain.flatten(1).clone()
    kept[:, 6:] = 0
    part = generate_sliding_window(gpt, c, kept.reshape(2, 5, 6), (4, 4), S(greedy=True), start=6, stop=13)
    assert torch.equal(part.flatten(1)[:, :13], plain.flatten(1)[:, :13])
    assert (part.flatten(1)[:, 13:] == 0).all()


def test_guidance_scale_is_a_sampling_key_read_only_by_sample():
    """`dvc exp run -S guidance_scale=2.0` reruns sample and evaluate only."""
    assert "guidance_scale" in SAMPLING_KEYS
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    readers = [n for n, s in stages.items() if "guidance_scale" in s.get("params", [])]
    assert readers == ["sample"]
    for profile in ("params.yaml", "profiles/smoke.yaml", "profiles/drin-paper.yaml"):
        assert "guidance_scale" in yaml.safe_load((REPO / profile).read_text())


def test_parse_resolution():
    assert cond.parse_resolution("256") == (256, 256)
    assert cond.parse_resolution("1280x832") == (832, 1280)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        cond.parse_resolution("12x")


def test_class_names(trained):
    assert cond.class_names(3)[2] == "class 2"
    names = cond.class_names(1000)
    assert names[9] == "ostrich" and names[232] == "Border collie" and len(names) == 1000
    synsets = trained / "data/raw/synsets.json"
    assert cond.class_names(2, synsets) == ["sphere", "cube"]        # the scenes' kinds
    assert cond.class_names(1000, synsets)[9] == "ostrich"           # another dataset's table does not apply


# ----------------------------------------------------------------------------- reconstructions

def test_reconstructions_beside_the_inputs_with_metrics(tmp_path, reference_dir, maps, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(maps / "photo.png", images / "a.png")
    Image.fromarray(np.full((36, 30, 3), 120, np.uint8)).save(images / "b.jpg")
    vqgan = Path(reference_dir) / "taming_small" / "vqgan_image"
    assert cli.main(["reconstruct", str(vqgan), str(images)]) == 0
    assert Image.open(images / "a_reconstruction.png").size == (64, 48)
    assert Image.open(images / "b_reconstruction.png").size == (28, 36)   # cropped to multiples of 4
    assert "mean PSNR" in capsys.readouterr().out
    # into a folder, fitted to a size, with the report; the inputs' reconstructions are not inputs again
    assert cli.main(["reconstruct", str(vqgan), str(images), "-o", str(tmp_path / "rec"), "--resolution", "32"]) == 0
    report = json.loads((tmp_path / "rec" / "reconstructions.json").read_text())
    assert report["images"] == 2 and sorted(p.name for p in (tmp_path / "rec").glob("*.png")) == ["a.png", "b.png"]
    assert all(np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in report["per_image"])
    cb = report["codebook"]
    assert cb["tokens"] == 2 * 8 * 8 and 1 <= cb["codes_used"] <= cb["codebook_size"] == 64
    # a perfect reconstruction has infinite PSNR: the metric is the real one, not a stand-in
    from tasks.evaluation.fidelity import psnr_ssim
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert psnr_ssim(x, x)[0] > 90


def test_reconstruct_a_transformers_first_stage_and_depth_maps(tmp_path, drin, maps, trained):
    assert cli.main(["reconstruct", str(drin), str(maps / "photo.png"), "-o", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "photo.png").is_file()
    assert cli.main(["reconstruct", str(drin), str(tmp_path / "missing.png")]) == 1
    depth_maps = sorted((trained / "data/dataset/depth/validation").rglob("*.png"))
    assert cli.main(["reconstruct", str(trained / "data/vqgan/depth"), *map(str, depth_maps),
                     "-o", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "reconstructions.json").read_text())
    assert report["images"] == len(depth_maps) == 2 and report["codebook"]["codebook_size"] == 32
    assert cli.main(["reconstruct", str(trained / "data/vqgan/segmentation"), str(depth_maps[0])]) == 1
