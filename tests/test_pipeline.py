"""The whole pipeline, as `dvc repro` runs it, on the smoke profile in a temporary
copy of the repository: every stage connects, a second repro does nothing, a
sampling sweep reruns exactly sample and evaluate, metrics and plots show, and a
bad parameter fails before any work naming its key."""
import json
import re
import shutil
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from fixtures_pipeline import REPO_ROOT, pipeline_env, run_dvc
from PIL import Image
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
    assert not re.search(r"Epoch \d+/-\d|Tip:|LeafSpec|TPU available", log)
    assert ran(first.stdout) == ["acquire", "extract", "annotate@depth", "train-vqgan@image", "train-vqgan@depth",
                                 "tokenize", "train-transformer", "sample", "fid-reference", "evaluate",
                                 "evaluate-vqgan"]
    grid = Image.open(repo / "data" / "samples" / "grid.png")
    assert grid.size[0] > grid.size[1] > 0
    samples = json.loads((repo / "metrics" / "samples.json").read_text())
    assert samples["comparable_to_published"] is False and "fid" not in samples
    assert samples["num_samples"] == 4 and samples["fd_random_inception"] >= 0
    assert (samples["reference_split"], samples["num_reference"], samples["resolution"]) == ("validation", 4, 16)

    # nothing changed: a second repro runs nothing, in seconds
    start = time.monotonic()
    second = run_dvc(repo, "repro")
    assert ran(second.stdout) == [] and "Data and pipelines are up to date" in second.stdout
    assert time.monotonic() - start < 30

    # a sampling sweep point reruns exactly sample and evaluate (not the reference features)
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
    assert set(metrics["metrics/summary/vqgan.json"]["data"]) == {"colourfulness_ratio", "fd_random_inception", "psnr",
                                                                        "ssim", "usage"}
    assert "codes_used" in run_dvc(repo, "metrics", "show", "metrics/codebook.json").stdout
    run_dvc(repo, "plots", "show", "-o", "plots_html")
    html = (repo / "plots_html" / "index.html").read_text()
    assert "grid.png" in html and "dvclive" in html and "cdn.jsdelivr" not in html  # the offline template

    # a change to the sampling kernels makes every stage that runs them stale, and only those
    with open(repo / "models" / "packed_linear.py", "a") as f:
        f.write("\n# touched\n")
    stale = set(json.loads(run_dvc(repo, "status", "--json").stdout))
    assert stale == {"train-transformer", "sample"}, stale


# the stage again: unforced, DVC would check the uninterrupted run's outputs out of its cache
AGAIN = ("-f", "-s", "train-vqgan@image")


def _start_repro(repo, shell: str, *targets: str) -> subprocess.Popen:
    """``dvc repro`` in the background with ``shell`` as the $SHELL DVC runs the stage with."""
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro", *targets], cwd=repo,
                            env={**pipeline_env(), "SHELL": shell}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _training_checkpoint(resume) -> bool:
    """A checkpoint of the run in progress, not the previous run's continuation point."""
    try:
        return (resume / "last.ckpt").is_file() and "finished_step" not in json.loads(
            (resume / "fingerprint.json").read_text())
    except FileNotFoundError:
        return False


def _kill_dvc_mid_training(repo, dvc: subprocess.Popen) -> psutil.Process:
    """SIGKILL the dvc process (only it) once the stage has written its first resume checkpoint;
    returns the stage's process."""
    resume = repo / "data/vqgan/image/resume"
    deadline = time.monotonic() + 600
    while not _training_checkpoint(resume):
        assert dvc.poll() is None and time.monotonic() < deadline, "dvc ended before the first checkpoint"
        time.sleep(0.1)
    stage = next(p for p in psutil.Process(dvc.pid).children(recursive=True)
                 if "train-vqgan" in " ".join(p.cmdline()) and "python" in p.cmdline()[0])   # not the shell
    dvc.kill()
    dvc.wait()
    return stage


def _same_training(repo, reference) -> None:
    from training_runs import differing_tensors, history
    folder = repo / "data/vqgan/image"
    assert differing_tensors(reference / "checkpoints/last.ckpt", folder / "checkpoints/last.ckpt") == []
    assert history(repo / "data/dvclive/vqgan/image") == history(reference / "dvclive")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_dvc_repro_killed_with_sigkill_resumes_and_a_surviving_stage_is_refused(smoke_repo, tmp_path):
    """`kill -9` of `dvc repro` used to leave the stage running, and the next repro failed with
    "Directory not empty: data/vqgan/image/dvclive/plots/metrics"."""
    repo = smoke_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["vqgan"]["image"].update(max_steps=100, ckpt_every=2, val_every=50)   # long enough to be killed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_dvc(repo, "repro", "train-vqgan@image")
    reference = tmp_path / "uninterrupted"
    shutil.copytree(repo / "data/vqgan/image", reference)
    shutil.copytree(repo / "data/dvclive/vqgan/image", reference / "dvclive")

    # Behind a shell that does not exec the command (dash), the stage outlives dvc: the next
    # repro is refused naming it, and once it is gone a repro resumes where it stopped.
    stage = _kill_dvc_mid_training(repo, _start_repro(repo, "/bin/sh", *AGAIN))
    try:
        # Stopped, not left running: on a busy machine the stage could finish during the refused repro
        stage.suspend()
        time.sleep(2)
        assert stage.is_running()
        refused = run_dvc(repo, "repro", *AGAIN, check=False)
        assert refused.returncode != 0
        assert f"data/vqgan/image is being written by another run: pid {stage.pid} on " in refused.stderr
    finally:
        stage.kill()
        stage.wait(60)
    resumed = run_dvc(repo, "repro", *AGAIN)    # had the stage lived on, it would have finished: no resume
    assert "Restored all states" in resumed.stdout + resumed.stderr
    _same_training(repo, reference)

    # With bash (which execs it) the stage dies with dvc, and the next repro resumes.
    stage = _kill_dvc_mid_training(repo, _start_repro(repo, "/bin/bash", *AGAIN))
    stage.wait(60)
    resumed = run_dvc(repo, "repro", *AGAIN)    # had the stage lived on, it would have finished: no resume
    assert "Restored all states" in resumed.stdout + resumed.stderr
    _same_training(repo, reference)
    assert run_dvc(repo, "status", "train-vqgan@image").stdout.strip().endswith("up to date.")


def run_stage(repo, *args):
    return run_bounded([sys.executable, "-m", "tasks.cli", *args], cwd=repo, env=pipeline_env(), cpu_s=120)


@pytest.mark.parametrize("override, key", [
    ("top_k=-5", "top_k"),
    ("top_p=1.5", "top_p"),
    ("temperature=0", "temperature"),
    ("data.source=web", "data.source"),
    ("annotate.depth.model=midas_v9", "annotate.depth.model"),
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


def test_each_stage_declares_the_params_it_reads():
    """dvc.yaml: the sampling keys belong to sample alone, so a sweep reruns only it and evaluate."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    readers = {name: s.get("params", []) if "do" not in s else s["do"].get("params", [])
               for name, s in stages.items()}
    for key in ("top_k", "top_p", "temperature", "guidance_scale"):
        assert [n for n, p in readers.items() if key in p] == ["sample"]
    assert readers["evaluate"] == ["evaluate"] and readers["train-vqgan"] == ["vqgan.${key}"]
