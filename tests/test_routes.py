"""Every route of the paper through the pipeline: the conditioning shapes the DVC graph
(`dvc dag` of each profile holds only what it needs), each conditioning runs end to end at
smoke size, and an official or published first stage is used instead of training one."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fixtures_pipeline import REPO_ROOT, make_smoke_repo, pipeline_env, run_dvc
from params_files import with_conditioning
from PIL import Image

from models.checkpoint import read_state_dict
from tasks.config.params import validate
from tasks.config.schema import PretrainedVQGAN
from tasks.config.typed import ConfigError
from tasks.data import coco

RAN = re.compile(r"Running stage '([^']+)'")
PROFILES = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "profiles").glob("*.yaml"))


def dag_stages(tmp_path: Path, profile: str) -> set[str]:
    """The stages `dvc dag` shows for dvc.yaml with ``profile`` as params.yaml."""
    repo = tmp_path / Path(profile).stem
    repo.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO_ROOT / profile, repo / "params.yaml")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=repo, check=True, env=pipeline_env())
    dot = run_dvc(repo, "dag", "--dot").stdout
    return set(re.findall(r'^"([^"]+)";$', dot, flags=re.M))


COMMON = {"acquire", "extract", "train-vqgan@image", "tokenize", "train-transformer", "sample", "fid-reference",
          "evaluate", "evaluate-vqgan"}


@pytest.mark.parametrize("profile, route", [
    ("params.yaml", {"annotate@depth", "train-vqgan@depth"}),
    ("profiles/smoke.yaml", {"annotate@depth", "train-vqgan@depth"}),
    ("profiles/drin-paper.yaml", {"annotate@depth", "train-vqgan@depth"}),   # no segmentation stage
    ("profiles/cin-paper.yaml", set()),                                       # no annotation stage
    ("profiles/uncond-folder.yaml", set()),
    ("profiles/sflckr.yaml", {"annotate@segmentation", "train-vqgan@segmentation"}),
    ("profiles/coco-scenes.yaml", {"annotate@objects"}),                     # boxes need no first stage
    ("profiles/open-images-scenes.yaml", {"annotate@objects"}),
])
def test_dvc_dag_of_each_profile_holds_only_what_it_needs(tmp_path, profile, route):
    assert dag_stages(tmp_path, profile) == COMMON | route


def test_every_profile_is_covered_and_valid():
    covered = {"params.yaml", "profiles/smoke.yaml", "profiles/drin-paper.yaml", "profiles/cin-paper.yaml",
               "profiles/uncond-folder.yaml", "profiles/sflckr.yaml", "profiles/ffhq.yaml", "profiles/celebahq.yaml",
               "profiles/faceshq.yaml", "profiles/coco-stuff.yaml", "profiles/ade20k.yaml", "profiles/coco-scenes.yaml",
               "profiles/open-images-scenes.yaml"}
    assert set(PROFILES) | {"params.yaml"} == covered
    for profile in covered:
        validate(REPO_ROOT / profile)


def test_the_dataset_profiles_carry_the_published_settings_and_the_papers_fid_split():
    profile = {name: validate(REPO_ROOT / f"profiles/{name}.yaml")
               for name in ("ffhq", "celebahq", "faceshq", "coco-stuff", "ade20k", "sflckr")}
    for name in ("ffhq", "celebahq"):      # unconditional; FID 9.6 / 10.2 against the train split
        p = profile[name]
        assert (p.conditioning, p.data.source, p.evaluate.reference) == ("none", name, "train")
        assert (p.transformer.n_layer, p.transformer.n_head, p.transformer.n_embd) == (24, 16, 1664)
        assert (p.sampling.top_k, p.sample.conditions * p.sample.per_condition) == (250, 50000)
    faces = profile["faceshq"]             # coordinates: CoordStage(1024, 16), crops of larger faces
    assert (faces.conditioning, faces.data.source, faces.tokenize.coord_n_embed) == ("coord", "faceshq", 1024)
    image = faces.vqgan["image"]
    assert (image.resolution, image.downsampling, image.n_embed) == (256, 16, 1024)
    assert faces.tokenize.rescale > image.resolution and faces.sample.resolution == faces.tokenize.rescale
    assert (faces.transformer.n_layer, faces.transformer.n_head, faces.transformer.n_embd) == (24, 16, 1024)
    for name, labels, fid_samples in (("coco-stuff", 183, 5000), ("ade20k", 151, 2000)):   # FID vs val, one per map
        p = profile[name]
        assert p.annotate == {} and p.source_maps["segmentation"].n_labels == labels
        assert p.vqgan["segmentation"].n_classes == labels and p.evaluate.reference == "validation"
        assert p.sample.conditions * p.sample.per_condition == fid_samples
    coco_sizes = (coco.TRAIN_RESCALE, coco.CROP)      # the original's coco_cond_stage.yaml: 296 -> 256
    assert all((p.rescale, p.resolution) == coco_sizes for p in profile["coco-stuff"].vqgan.values())
    assert profile["coco-stuff"].tokenize.rescale == coco.TRAIN_RESCALE
    sflckr = profile["sflckr"]
    assert sflckr.data.source == "folder" and sflckr.annotate["segmentation"].model == "deeplabv2_cocostuff"
    assert sflckr.vqgan["segmentation"].n_classes == 182


def test_the_paper_profiles_carry_the_papers_settings():
    drin, cin = validate(REPO_ROOT / "profiles/drin-paper.yaml"), validate(REPO_ROOT / "profiles/cin-paper.yaml")
    assert drin.annotate["depth"].model == "midas_v20"       # what the published D-RIN models saw
    assert (drin.evaluate.reference, drin.evaluate.reference_images) == ("train", 50000)
    assert cin.conditioning == "class" and isinstance(cin.vqgan["image"], PretrainedVQGAN)
    t = cin.transformer
    assert (t.n_layer, t.n_head, t.n_embd) == (48, 24, 1536)
    assert (cin.sample.per_condition, cin.sampling.top_k, cin.sampling.top_p) == (50, 600, 0.92)


@pytest.mark.parametrize("change, message", [
    (lambda p: p["annotate"].update(segmentation={"model": "groundtruth"}),
     r"annotate: conditioning depth reads the depth maps; annotate.segmentation would be computed for nothing"),
    (lambda p: p["annotate"].clear(), r"add annotate.depth"),
    (lambda p: p["vqgan"].pop("depth"), r"add vqgan.depth"),
    (lambda p: p.update(conditioning="class"), r"conditioning class reads no per-image maps"),
    (lambda p: p.update(conditioning="text"), r"conditioning: 'text' is not one of"),
    (lambda p: p["vqgan"].update(image={"folder": "x", "sha256": "abc"}), r"vqgan.image.sha256: must be 64"),
])
def test_the_graph_sections_must_hold_what_the_conditioning_reads(change, message):
    params = yaml.safe_load((REPO_ROOT / "profiles/smoke.yaml").read_text())
    change(params)
    from tasks.config.params import from_dict
    with pytest.raises(ConfigError, match=message):
        from_dict(params)


def run_route(repo: Path) -> list[str]:
    out = run_dvc(repo, "repro").stdout
    assert json.loads(run_dvc(repo, "status", "--json").stdout) == {}
    return RAN.findall(out)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("conditioning, route", [
    ("class", []),
    ("none", []),
    ("segmentation", ["annotate@segmentation", "train-vqgan@segmentation"]),
])
def test_each_conditioning_runs_end_to_end_at_smoke_size(tmp_path, conditioning, route):
    """(The depth route is tests/test_pipeline.py's smoke test.) The class model is trained
    with condition dropout, and a guidance sweep point reruns only sample and evaluate."""
    repo = make_smoke_repo(tmp_path / "repo", conditioning=conditioning)
    if conditioning == "class":
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["transformer"]["label_dropout"] = 0.5
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = run_route(repo)
    assert set(stages) == COMMON | set(route), stages
    project = yaml.safe_load((repo / "data/transformer/configs/transformer-project.yaml").read_text())["model"]
    cond_stage = project["params"]["cond_stage_config"]
    if conditioning == "class":
        assert cond_stage["target"] == "taming.modules.util.Labelator" and cond_stage["params"]["n_classes"] == 2
    elif conditioning == "none":
        assert cond_stage == "__is_unconditional__"
    else:
        assert cond_stage["target"] == "taming.models.vqgan.VQSegmentationModel"
    samples = json.loads((repo / "metrics/samples.json").read_text())
    assert samples["conditioning"] == {"class": "class_label", "none": "none"}.get(conditioning, conditioning)
    assert samples["num_samples"] == 4 and samples["fd_random_inception"] >= 0
    reconstruction = json.loads((repo / "metrics/reconstruction.json").read_text())
    assert set(reconstruction) == {"image"} | ({"segmentation"} if conditioning == "segmentation" else set())
    if conditioning == "segmentation":
        assert 0 <= reconstruction["segmentation"]["pixel_accuracy"] <= 1
    assert Image.open(repo / "data/samples/grid.png").size[0] > 0
    if conditioning == "class":
        assert project["params"]["null_token"] == 2      # recorded: guidance works after reloading
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "class route"],
                       cwd=repo, check=True)
        sweep = run_dvc(repo, "exp", "run", "-S", "guidance_scale=2.0")
        assert RAN.findall(sweep.stdout) == ["sample", "evaluate"]
        guided = json.loads((repo / "data/samples/samples.json").read_text())
        assert guided["guidance_scale"] == 2.0


REFERENCE_VQGAN = "tests/reference/taming_small/vqgan_image"
REFERENCE_SHA256 = "600b513633a6d2699d21ed6a158007d1b04b47f70e5c4d7bc88fd74706f74b6e"


def official_first_stage(params: dict, sha256: str | None = REFERENCE_SHA256) -> dict:
    """Smoke params on the class route with the original code's reference VQGAN as the first stage
    (32 px, f4, 64 codes), named as a folder instead of trained."""
    params = with_conditioning(params, "class")
    params["vqgan"] = {"image": {"folder": REFERENCE_VQGAN, "sha256": sha256}}
    params["evaluate"]["resolution"] = 32
    return params


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_an_official_first_stage_is_verified_copied_and_used(tmp_path):
    repo = make_smoke_repo(tmp_path / "repo")
    params = official_first_stage(yaml.safe_load((repo / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = run_route(repo)
    assert "train-vqgan@image" in stages and "annotate@depth" not in stages
    folder = repo / "data/vqgan/image"
    assert (folder / "checkpoints/last.ckpt").read_bytes() == (REPO_ROOT / REFERENCE_VQGAN /
                                                               "checkpoints/last.ckpt").read_bytes()
    source = json.loads((folder / "configs/source.json").read_text())
    assert source["sha256"] == REFERENCE_SHA256 and source["resolution"] == 32
    metrics = json.loads((repo / "data/dvclive/vqgan/image/metrics.json").read_text())
    assert metrics["val"]["psnr"] > 0 and list((repo / "data/dvclive/vqgan/image/plots/images").rglob("*.png"))
    # the tokens and the transformer are the reference VQGAN's: 8x8 grid, 64 codes, stages copied in
    meta = json.loads((repo / "metrics/samples.json").read_text())
    assert meta["resolution"] == 32
    project = yaml.safe_load((repo / "data/transformer/configs/transformer-project.yaml").read_text())["model"]
    assert project["params"]["first_stage_config"]["params"]["n_embed"] == 64
    assert Image.open(next((repo / "data/samples/images").glob("*.png"))).size == (32, 32)
    ckpt = torch.load(repo / "data/transformer/checkpoints/last.ckpt", weights_only=True)
    reference, _ = read_state_dict(REPO_ROOT / REFERENCE_VQGAN / "checkpoints/last.ckpt")
    torch.testing.assert_close(ckpt["state_dict"]["first_stage_model.quantize.embedding.weight"],
                               reference["quantize.embedding.weight"], rtol=0, atol=0)

    # a folder whose checkpoint is not the expected file is refused, naming both hashes
    params = official_first_stage(yaml.safe_load((repo / "params.yaml").read_text()), sha256="0" * 64)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run_dvc(repo, "repro", "train-vqgan@image", check=False)
    assert failed.returncode != 0 and f"SHA-256 {REFERENCE_SHA256}" in failed.stdout + failed.stderr
