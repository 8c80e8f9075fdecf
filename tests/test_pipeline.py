"""The whole pipeline, as `dvc repro` runs it, on the smoke profile in a temporary
copy of the repository: every stage connects, a second repro does nothing, a
sampling sweep reruns exactly sample and evaluate, metrics and plots show, and a
bad parameter fails before any work naming its key."""
import json
import re
import subprocess
import sys
import time

import pytest
import yaml
from PIL import Image

from fixtures_pipeline import REPO_ROOT, pipeline_env, run_dvc
from processes import run_bounded
from tasks.config.params import validate
from tasks.config.typed import ConfigError

RAN = re.compile(r"Running stage '([^']+)'")


def ran(output: str) -> list[str]:
    return RAN.findall(output)


def lock_stages(repo) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a safety net only: each dvc command is bounded by its CPU time
def test_smoke_pipeline_repro_noop_sweep_metrics_plots(smoke_repo):
    repo = smoke_repo
    first = run_dvc(repo, "repro")
    # training progress in a log: steps of max_steps with rate and ETA, and no noise
    log = first.stdout + first.stderr
    assert re.search(r"train-transformer: 100%.*\| 4/4 \[", log) and re.search(r"train-vqgan depth: 100%.*4/4", log)
    assert not re.search(r"Epoch \d+/-\d|Tip:|LeafSpec", log)
    assert ran(first.stdout) == ["acquire", "extract", "depth", "segment", "train-vqgan@image",
                                 "train-vqgan@depth", "tokenize", "train-transformer", "sample", "evaluate"]
    grid = Image.open(repo / "data" / "samples" / "grid.png")
    assert grid.size[0] > grid.size[1] > 0
    samples = json.loads((repo / "metrics" / "samples.json").read_text())
    assert samples["comparable_to_published"] is False and "fid" not in samples
    assert samples["num_samples"] == 4 and samples["fd_random_inception"] >= 0

    # nothing changed: a second repro runs nothing, in seconds
    start = time.monotonic()
    second = run_dvc(repo, "repro")
    assert ran(second.stdout) == [] and "Data and pipelines are up to date" in second.stdout
    assert time.monotonic() - start < 30

    # a sampling sweep point reruns exactly sample and evaluate
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "smoke run"],
                   cwd=repo, check=True)
    before = lock_stages(repo)
    sweep = run_dvc(repo, "exp", "run", "-S", "top_k=4")
    assert ran(sweep.stdout) == ["sample", "evaluate"]
    after = lock_stages(repo)
    assert sorted(s for s in after if after[s] != before[s]) == ["evaluate", "sample"]
    assert after["sample"]["params"]["params.yaml"]["top_k"] == 4

    # `dvc metrics show`: the headline numbers only, rounded (the details: dvc metrics show metrics/)
    metrics = json.loads(run_dvc(repo, "metrics", "show", "--json").stdout)[""]["data"]
    assert list(metrics) == ["metrics/summary/samples.json", "metrics/summary/vqgan.json"]
    assert set(metrics["metrics/summary/samples.json"]["data"]) == {"fd_random_inception"}
    assert set(metrics["metrics/summary/vqgan.json"]["data"]) == {"fd_random_inception", "psnr", "ssim", "usage"}
    assert "codes_used" in run_dvc(repo, "metrics", "show", "metrics/codebook.json").stdout
    run_dvc(repo, "plots", "show", "-o", "plots_html")
    html = (repo / "plots_html" / "index.html").read_text()
    assert "grid.png" in html and "dvclive" in html and "cdn.jsdelivr" not in html  # the offline template

    # a change to the sampling kernels makes every stage that runs them stale, and only those
    with open(repo / "models" / "packed_linear.py", "a") as f:
        f.write("\n# touched\n")
    stale = set(json.loads(run_dvc(repo, "status", "--json").stdout))
    assert stale == {"tokenize", "train-transformer", "sample", "evaluate"}, stale


def run_stage(repo, *args):
    return run_bounded([sys.executable, "-m", "tasks.cli", *args], cwd=repo, env=pipeline_env(), cpu_s=120)


@pytest.mark.parametrize("override, key", [
    ("top_k=-5", "top_k"),
    ("top_p=1.5", "top_p"),
    ("temperature=0", "temperature"),
    ("data.source=web", "data.source"),
    ("depth.model=midas_v9", "depth.model"),
    ("vqgan.foo={resolution: 8}", "vqgan.foo"),
    ("vqgan.image.size=32", "vqgan.image.size"),
    ("tokenize.image_model=nope", "tokenize.image_model"),
    ("sample.classes=[]", "sample.classes"),
    ("evaluate.batch_size=0", "evaluate.batch_size"),
    ("colour=blue", "colour"),
])
def test_invalid_params_fail_in_the_first_stage_before_work(tmp_path, override, key):
    """Every pipeline command checks the whole params file: `taming acquire` (the first
    stage of a repro) already refuses a bad sampling or evaluate value, and writes nothing."""
    params = tmp_path / "params.yaml"
    params.write_text((REPO_ROOT / "profiles" / "smoke.yaml").read_text())
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(params, [override])
    proc = run_stage(tmp_path, "acquire", "-S", override, "--out", str(tmp_path / "raw"))
    assert proc.returncode == 2 and key in proc.stderr and "invalid parameters" in proc.stderr
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("profile", ["params.yaml", "profiles/smoke.yaml", "profiles/drin-paper.yaml"])
def test_profiles_are_valid(profile):
    config = validate(REPO_ROOT / profile)
    assert set(config.vqgan) >= {"image", "depth"} and config.tokenize.cond == "depth"


def test_paper_profile_has_the_drin_settings():
    c = validate(REPO_ROOT / "profiles" / "drin-paper.yaml")
    image = c.vqgan["image"]
    assert (image.resolution, image.n_embed, image.downsampling) == (256, 1024, 16)
    t = c.transformer
    assert (t.n_layer, t.n_head, t.n_embd) == (24, 16, 1024)
    assert c.data.source == "imagenet" and c.depth.model == "midas_v21"


def test_each_stage_declares_the_params_it_reads():
    """dvc.yaml: the sampling keys belong to sample alone, so a sweep reruns only it and evaluate."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    readers = {name: s.get("params", []) if "do" not in s else s["do"].get("params", [])
               for name, s in stages.items()}
    for key in ("top_k", "top_p", "temperature"):
        assert [n for n, p in readers.items() if key in p] == ["sample"]
    assert readers["evaluate"] == ["evaluate"] and readers["train-vqgan"] == ["vqgan.${key}"]
