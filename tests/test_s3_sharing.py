"""Sharing through S3 against a real S3-compatible server (moto) on 127.0.0.1.

Real DVC (subprocesses, the repository's own ``.dvc/config`` remote), real boto3,
real ``taming weights``. A toy DVC project (one stage, a directory output and a file
output) makes the DVC-level checks fast; the smoke pipeline test runs the real graph.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures_pipeline import REPO_ROOT, make_smoke_repo
from fixtures_s3 import assert_no_credentials
from fixtures_s3 import run_logged as sh

GEN = """\
import os, random
random.seed(0)
os.makedirs("out", exist_ok=True)
for i in range({n}):
    open(f"out/{{i:02d}}.bin", "wb").write(random.randbytes(20000))
open("model.bin", "wb").write(random.randbytes(1000))
with open("../runs.log", "a") as f:  # outside the repo: counts how often the stage really ran
    f.write("ran\\n")
"""


def dvc(cwd, *args, **kw) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args, **kw)


def git(cwd, *args) -> str:
    return sh(cwd, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false",
              *args).stdout


# Unset, so that only the Makefile's own export can turn botocore's default checksums off.
NO_CHECKSUM_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": None, "AWS_RESPONSE_CHECKSUM_VALIDATION": None}


def make(repo, target: str, **kw) -> subprocess.CompletedProcess:
    """The repository's make target, with this venv (``-o install``: nothing to install)."""
    return sh(repo, "make", "-o", "install", f"VENV={sys.prefix}", target, **kw)


def sends_checksum(headers: dict[str, str]) -> bool:
    return any(k.startswith("x-amz-checksum") or k == "x-amz-sdk-checksum-algorithm" or "aws-chunked" in v
               for k, v in headers.items())


def use_remote(repo: Path, server, url: str | None = None) -> None:
    """What a user does once per machine: the endpoint (and here a test's own prefix) in config.local."""
    dvc(repo, "remote", "modify", "--local", "storage", "endpointurl", server.endpoint)
    if url:
        dvc(repo, "remote", "modify", "--local", "storage", "url", url)


def make_toy_repo(dest: Path, files: int = 6) -> Path:
    """git + DVC repo with the project's .dvc/config and one stage ``gen``; reproduced and committed."""
    dest.mkdir(parents=True)
    git(dest, "init", "-q", "-b", "main")
    dvc(dest, "init", "-q")
    for shipped in (".dvc/config", "Makefile"):
        shutil.copyfile(REPO_ROOT / shipped, dest / shipped)
    (dest / "gen.py").write_text(GEN.format(n=files))
    dvc(dest, "stage", "add", "-q", "-n", "gen", "-d", "gen.py", "-o", "out", "-o", "model.bin", "python gen.py")
    dvc(dest, "repro", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "toy")
    return dest


def tree_digests(repo: Path, paths) -> dict[str, str]:
    """MD5 of each file under ``paths`` (files or folders) that exists in ``repo``."""
    out = {}
    for p in paths:
        for f in sorted([repo / p] if (repo / p).is_file() else (repo / p).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(repo))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def check_bucket_integrity(objects: dict[str, bytes]) -> int:
    """Every DVC object's content hashes to its content-addressed name; run-cache entries parse.
    Returns the number of data objects."""
    data = {k: v for k, v in objects.items() if "/files/md5/" in k}
    for key, body in data.items():
        a, b = key.split("/")[-2:]
        assert hashlib.md5(body).hexdigest() == a + b.removesuffix(".dir"), f"corrupt object {key}"
    for key, body in objects.items():
        if "/runs/" in key:
            assert isinstance(yaml.safe_load(body), dict), f"corrupt run-cache entry {key}"
    return len(data)


def test_shipped_remote_is_s3_and_default():
    # --project: what .dvc/config says, whatever a developer's config.local overrides
    out = subprocess.run([sys.executable, "-m", "dvc", "remote", "list", "--project"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == ["storage", "s3://taming-pipeline/dvc", "(default)"]
    tracked = (REPO_ROOT / ".dvc" / "config").read_text()
    assert "access_key" not in tracked and "secret" not in tracked and "endpointurl" not in tracked


def test_push_then_fresh_clone_pulls_and_is_up_to_date(s3_up, tmp_path):
    server, bucket = s3_up, s3_up.create_bucket("taming-pipeline")  # the shipped remote's bucket
    a = make_toy_repo(tmp_path / "a")  # endpoint from the environment: AWS_ENDPOINT_URL_S3
    first_request = len(server.requests)
    make(a, "push", env=NO_CHECKSUM_ENV)  # the Makefile alone must provide the checksum setting
    uploads = [h for m, _, h in server.requests[first_request:] if m == "PUT"]
    assert len(uploads) == 6 + 3  # 6 files, the .dir listing, model.bin, the run-cache entry
    # botocore >= 1.36 would add x-amz-checksum-crc32 to each: the documented setting turns that off
    assert not any(sends_checksum(h) for h in uploads)

    b = tmp_path / "elsewhere" / "b"
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    assert not (b / ".dvc" / "config.local").exists()  # per-machine settings do not travel
    use_remote(b, server)
    # a wrong endpoint in the environment proves the clone uses its config.local one
    wrong = {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    make(b, "pull", env={**wrong, **NO_CHECKSUM_ENV})
    assert tree_digests(b, ["out", "model.bin"]) == tree_digests(a, ["out", "model.bin"])
    assert "up to date" in dvc(b, "status").stdout
    repro = dvc(b, "repro").stdout
    assert "didn't change, skipping" in repro and "Running stage" not in repro
    # the run cache came along: without dvc.lock the stage is restored, not re-run
    (b / "dvc.lock").unlink()
    assert "is cached - skipping run" in dvc(b, "repro").stdout
    assert (tmp_path / "runs.log").read_text().count("ran") == 1  # repo a ran gen.py once...
    assert not (b.parent / "runs.log").exists()  # ...and the clone never did
    assert tree_digests(b, ["out", "model.bin"]) == tree_digests(a, ["out", "model.bin"])

    objects = server.objects(bucket, "dvc/")
    assert check_bucket_integrity(objects) == 6 + 2
    assert_no_credentials(a, b, bucket_objects=objects)


SCALED = """\
import os, yaml
scale = yaml.safe_load(open("params.yaml"))["scale"]
os.makedirs("out", exist_ok=True)
for i in range(3):
    open(f"out/{i}.bin", "wb").write(bytes([i * scale % 256]) * 1000)
open("model.bin", "wb").write(bytes([scale]) * 100)
with open("../runs.log", "a") as f:  # outside the repo: counts how often the stage really ran
    f.write(f"ran scale={scale}\\n")
"""


def set_scale(repo: Path, scale: int) -> None:
    (repo / "params.yaml").write_text(f"scale: {scale}\n")


def test_a_setting_not_in_dvc_lock_is_restored_in_a_clone_not_run_again(s3_up, tmp_path):
    """The README's promise: a clone that pulled skips any stage already run with the same inputs,
    also one whose outputs are not in dvc.lock (a sweep point, an experiment tried and left).
    `dvc push --run-cache` sends the run-cache's entries but not their outputs (the control);
    `make push` / `make pull` move those too."""
    server, bucket = s3_up, s3_up.create_bucket("settings")
    a = tmp_path / "a"
    a.mkdir()
    git(a, "init", "-q", "-b", "main")
    dvc(a, "init", "-q")
    for shipped in (".dvc/config", "Makefile"):
        shutil.copyfile(REPO_ROOT / shipped, a / shipped)
    use_remote(a, server, url=f"s3://{bucket}/dvc")
    (a / "gen.py").write_text(SCALED)
    set_scale(a, 1)
    dvc(a, "stage", "add", "-q", "-n", "gen", "-p", "scale", "-d", "gen.py", "-o", "out", "-o", "model.bin",
        "python gen.py")
    dvc(a, "repro", "-q")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "scale 1")
    set_scale(a, 2)  # try another setting, look at it, go back to the committed one
    dvc(a, "repro", "-q")
    tried = tree_digests(a, ["out", "model.bin"])
    git(a, "checkout", "params.yaml", "dvc.lock")
    dvc(a, "checkout", "-q")
    make(a, "push")
    assert (tmp_path / "runs.log").read_text() == "ran scale=1\nran scale=2\n"

    def clone(name: str) -> Path:
        repo = tmp_path / name / "repo"
        sh(tmp_path, "git", "clone", "-q", str(a), str(repo))
        use_remote(repo, server, url=f"s3://{bucket}/dvc")
        return repo

    b = clone("b")
    make(b, "pull")
    set_scale(b, 2)
    assert "Stage 'gen' is cached - skipping run" in dvc(b, "repro").stdout
    assert tree_digests(b, ["out", "model.bin"]) == tried
    assert not (b.parent / "runs.log").exists()  # the clone never ran it

    control = clone("control")  # DVC alone: the entry arrives, its outputs do not
    dvc(control, "pull", "--run-cache")
    set_scale(control, 2)
    assert "Running stage 'gen'" in dvc(control, "repro").stdout
    assert (control.parent / "runs.log").read_text() == "ran scale=2\n"
    assert_no_credentials(a, b, bucket_objects=server.objects(bucket))


def test_project_client_sends_checksums_only_when_required(s3_up, monkeypatch):
    """botocore >= 1.36 defaults would send a CRC32 with every upload (the control below);
    models/s3.py's client does not, whatever the environment says."""
    import boto3

    bucket = s3_up.create_bucket("checksums")
    for var in NO_CHECKSUM_ENV:
        monkeypatch.delenv(var)
    clients = {"default": boto3.client("s3", endpoint_url=s3_up.endpoint), "project": s3_up.client()}
    sent = {}
    for name, c in clients.items():
        first = len(s3_up.requests)
        c.put_object(Bucket=bucket, Key=name, Body=b"payload")
        sent[name] = [h for m, _, h in s3_up.requests[first:] if m == "PUT"]
        assert c.get_object(Bucket=bucket, Key=name)["Body"].read() == b"payload"
    assert sends_checksum(sent["default"][0]) and not sends_checksum(sent["project"][0])


def test_push_interrupted_by_server_stop_fails_clearly_and_resumes(s3_up, tmp_path):
    server, bucket = s3_up, s3_up.create_bucket("interrupted")
    a = make_toy_repo(tmp_path / "a", files=12)
    use_remote(a, server, url=f"s3://{bucket}/dvc")
    server.stop_after_uploads(4)
    # one attempt per request: botocore's retry back-off would spend ~6 s per refused file
    # -v: error paths with tracebacks and debug logs are where credentials would leak
    failed = dvc(a, "push", "--run-cache", "-v", "-j", "2", env={"AWS_MAX_ATTEMPTS": "1"}, check=False)
    assert failed.returncode != 0
    assert "failed to push data to the cloud" in failed.stderr
    assert f"Could not connect to the endpoint URL: \"{server.endpoint}/{bucket}/dvc/" in failed.stderr

    server.start()  # same port, objects kept
    partial = server.objects(bucket)
    assert 0 < check_bucket_integrity(partial) < 12 + 2  # some made it, none of them corrupt
    assert "new:" in dvc(a, "status", "--cloud").stdout  # what did not make it is still to push

    done = dvc(a, "push", "--run-cache")
    assert "files pushed" in done.stdout
    assert "are in sync" in dvc(a, "status", "--cloud").stdout
    objects = server.objects(bucket)
    assert check_bucket_integrity(objects) == 12 + 2
    assert_no_credentials(a, bucket_objects=objects)


def test_weights_pushed_from_one_cache_resolve_in_another(s3_up, tmp_path, monkeypatch):
    from models import weights

    bucket = s3_up.create_bucket("weights-mirror")
    mirror = f"s3://{bucket}/team"
    original = tmp_path / "downloaded" / weights.entry("deeplabv2_cocostuff").filename
    original.parent.mkdir()
    original.write_bytes(os.urandom(300_000))

    first = {"TAMING_WEIGHTS_DIR": str(tmp_path / "cache-a")}
    sh(tmp_path, "taming", "weights", "import", "deeplabv2_cocostuff", str(original), env=first)
    pushed = sh(tmp_path, "taming", "weights", "push", "deeplabv2_cocostuff", mirror, env=first)
    assert pushed.stdout.strip() == f"{mirror}/{original.name}"

    # another machine: empty cache, no internet, only the mirror
    monkeypatch.setenv("TAMING_WEIGHTS_DIR", str(tmp_path / "cache-b"))
    monkeypatch.setenv("TAMING_WEIGHTS_S3", mirror)
    monkeypatch.setenv("TAMING_OFFLINE", "1")
    path = weights.resolve("deeplabv2_cocostuff")
    assert path == tmp_path / "cache-b" / original.name
    assert path.read_bytes() == original.read_bytes()
    assert_no_credentials(tmp_path)


@pytest.mark.slow
def test_smoke_pipeline_pushed_from_one_clone_is_up_to_date_in_another(s3_up, tmp_path):
    server, bucket = s3_up, s3_up.create_bucket("smoke")
    offline = {"TAMING_OFFLINE": "1"}  # stages look for pretrained weights: never off this machine
    a = make_smoke_repo(tmp_path / "a")
    use_remote(a, server, url=f"s3://{bucket}/dvc")
    dvc(a, "repro", env=offline)
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "smoke run")
    # a sampling setting tried and left (as the sample sweep leaves its points): not in dvc.lock
    tried = dvc(a, "exp", "run", "-S", "top_k=4", env=offline).stdout
    assert "Running stage 'sample'" in tried and "Running stage 'evaluate'" in tried
    tried = tree_digests(a, ["data/samples", "metrics"])
    git(a, "checkout", "params.yaml", "dvc.lock")
    dvc(a, "checkout")
    make(a, "push")
    outs = dvc(a, "ls", "-R", "--dvc-only", ".").stdout.split()  # every file the pipeline declares
    assert len(outs) > 50 and "data/vqgan/image/checkpoints/last.ckpt" in outs
    assert {"metrics/summary/vqgan.json", "metrics/samples.json", "metrics/codebook.json"} <= set(outs)

    b = tmp_path / "elsewhere" / "b"
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    use_remote(b, server, url=f"s3://{bucket}/dvc")
    make(b, "pull")
    pulled = tree_digests(b, outs)
    assert pulled == tree_digests(a, outs) and len(pulled) == len(outs)
    assert "up to date" in dvc(b, "status").stdout
    assert "Running stage" not in dvc(b, "repro", env=offline).stdout
    # the run cache came along: with no dvc.lock at all, the stages are restored instead of run
    # (all but extract, whose persistent output DVC never run-caches; it reruns identically)
    (b / "dvc.lock").unlink()
    restored = dvc(b, "repro", env=offline).stdout
    for stage in ("train-vqgan@image", "train-vqgan@depth", "tokenize", "train-transformer", "sample"):
        assert f"Stage '{stage}' is cached - skipping run" in restored
    assert tree_digests(b, outs) == pulled
    assert git(b, "status", "--porcelain") == ""  # the restored dvc.lock is the committed one
    # evaluate's metrics came from the remote, and `dvc metrics show` lists them
    shown = json.loads(dvc(b, "metrics", "show", "--json").stdout)[""]["data"]
    assert {path: m["data"] for path, m in shown.items()} == {
        path: json.loads((a / path).read_text()) for path in ("metrics/summary/samples.json", "metrics/summary/vqgan.json")}
    # the setting only tried in the other clone is checked out, not sampled again
    again = dvc(b, "exp", "run", "-S", "top_k=4", env=offline).stdout
    assert "Stage 'sample' is cached - skipping run" in again and "Running stage" not in again
    assert tree_digests(b, ["data/samples", "metrics"]) == tried

    objects = server.objects(bucket)
    check_bucket_integrity(objects)
    assert_no_credentials(a, b, bucket_objects=objects)
