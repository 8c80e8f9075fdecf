"""``taming publish`` and reading published models back, against moto on 127.0.0.1.

The model is a real VQGAN checkpoint folder in the original project's layout (the
reference one made by the original code), uploaded by the real command line.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from fixtures_s3 import assert_no_credentials
from fixtures_s3 import run_logged as sh

from models import s3
from models.folder import ModelFolder
from models.pretrained import load_pretrained

CKPT, CONFIG = "checkpoints/last.ckpt", "configs/2026-01-01T00-00-00-project.yaml"


@pytest.fixture
def model_folder(reference_dir, tmp_path) -> Path:
    return Path(shutil.copytree(Path(reference_dir) / "taming_small" / "vqgan_image", tmp_path / "vqgan_image"))


@pytest.fixture
def project(tmp_path) -> Path:
    """A committed git repo with a params.yaml: where `taming publish` runs."""
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / "params.yaml").write_text("train_vqgan:\n  image:\n    lr: 4.5e-06\n    steps: 3\n")
    for args in (["init", "-q"], ["add", "params.yaml"], ["commit", "-q", "-m", "params"]):
        sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "commit.gpgsign=false", *args)
    return repo


def publish(project: Path, folder: Path, uri: str, check: bool = True):
    return sh(project, "taming", "publish", str(folder), uri, check=check)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_writes_manifest_last_and_load_pretrained_reads_s3(s3_up, model_folder, project, tmp_path,
                                                                   monkeypatch):
    bucket = s3_up.create_bucket("models")
    first = len(s3_up.requests)
    out = publish(project, model_folder, f"s3://{bucket}/team").stdout
    assert "published s3://models/team/vqgan_image (2 uploaded, 0 unchanged)" in out

    puts = [path for method, path, _ in s3_up.requests[first:] if method == "PUT"]
    assert puts[-1] == "/models/team/vqgan_image/manifest.json"  # readers key on it: it goes last
    c = s3_up.client()
    manifest = json.loads(c.get_object(Bucket=bucket, Key="team/vqgan_image/manifest.json")["Body"].read())
    assert manifest["files"] == {rel: {"sha256": sha256(model_folder / rel), "size": (model_folder / rel).stat().st_size}
                                 for rel in (CKPT, CONFIG)}
    head = sh(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert manifest["git"] == {"revision": head, "dirty": False}
    assert manifest["params"] == yaml.safe_load((project / "params.yaml").read_text())
    assert manifest["name"] == "vqgan_image"
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(manifest["created"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)

    for var in ("XDG_CACHE_HOME", "TAMING_S3_CACHE", "TAMING_CHECKPOINT_CACHE"):  # wherever it caches
        monkeypatch.setenv(var, str(tmp_path / "s3-cache"))
    remote = load_pretrained("s3://models/team/vqgan_image")
    local = load_pretrained(model_folder)
    remote_state, local_state = remote.state_dict(), local.state_dict()
    assert remote_state.keys() == local_state.keys() and len(remote_state) > 10
    assert all(remote_state[k].equal(local_state[k]) for k in local_state)
    assert_no_credentials(project, tmp_path / "s3-cache")


def test_publishing_again_uploads_only_changed_files(s3_up, model_folder, project, tmp_path):
    bucket = s3_up.create_bucket("models-again")
    uri = f"s3://{bucket}/team"
    publish(project, model_folder, uri)
    dest = s3.fetch_published(f"{uri}/vqgan_image", tmp_path / "copy")
    ckpt_mtime = (dest / CKPT).stat().st_mtime_ns

    first = len(s3_up.requests)
    assert "(0 uploaded, 2 unchanged)" in publish(project, model_folder, uri).stdout
    assert [p for m, p, _ in s3_up.requests[first:] if m == "PUT"] == [f"/{bucket}/team/vqgan_image/manifest.json"]

    with open(model_folder / CONFIG, "a") as f:
        f.write("# retrained\n")
    first = len(s3_up.requests)
    assert "(1 uploaded, 1 unchanged)" in publish(project, model_folder, uri).stdout
    assert f"/{bucket}/team/vqgan_image/{CKPT}" not in [p for m, p, _ in s3_up.requests[first:] if m == "PUT"]

    # the reader, too, fetches only what changed
    s3.fetch_published(f"{uri}/vqgan_image", dest)
    assert (dest / CONFIG).read_bytes() == (model_folder / CONFIG).read_bytes()
    assert (dest / CKPT).stat().st_mtime_ns == ckpt_mtime


def test_interrupted_publish_is_invisible_to_readers_and_rerun_completes(s3_up, model_folder, project, tmp_path):
    bucket = s3_up.create_bucket("models-interrupted")
    uri = f"s3://{bucket}/team"
    s3_up.stop_after_uploads(1)  # the checkpoint gets through, then the server goes away
    failed = publish(project, model_folder, uri, check=False)
    assert failed.returncode == 1
    assert f"taming publish: upload to {uri} failed" in failed.stderr
    assert "Could not connect to the endpoint URL" in failed.stderr and s3_up.endpoint in failed.stderr

    s3_up.start()
    assert set(s3_up.objects(bucket)) == {f"team/vqgan_image/{CKPT}"}  # no manifest: not published
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        s3.fetch_published(f"{uri}/vqgan_image", tmp_path / "reader")

    assert "(1 uploaded, 1 unchanged)" in publish(project, model_folder, uri).stdout
    dest = s3.fetch_published(f"{uri}/vqgan_image", tmp_path / "reader")
    assert sha256(dest / CKPT) == sha256(model_folder / CKPT)
    assert_no_credentials(project, tmp_path / "reader")


def test_reader_refuses_files_that_do_not_match_the_manifest(s3_up, model_folder, project, tmp_path):
    bucket = s3_up.create_bucket("models-tampered")
    uri = f"s3://{bucket}/team/vqgan_image"
    publish(project, model_folder, f"s3://{bucket}/team")
    c = s3_up.client()
    c.put_object(Bucket=bucket, Key=f"team/vqgan_image/{CONFIG}", Body=b"model: {}\n")
    with pytest.raises(ValueError, match=f"{CONFIG}: SHA-256 .* does not match the manifest"):
        s3.fetch_published(uri, tmp_path / "reader")
    assert not (tmp_path / "reader" / CONFIG).exists()  # nothing unverified under a final name
    assert not list((tmp_path / "reader").rglob(".tmp-*"))

    manifest = {"name": "x", "files": {"../outside.yaml": {"sha256": "0" * 64, "size": 1}}}
    c.put_object(Bucket=bucket, Key="team/vqgan_image/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(ValueError, match="outside the model folder"):
        s3.fetch_published(uri, tmp_path / "reader2")
    assert not (tmp_path / "outside.yaml").exists()

    c.put_object(Bucket=bucket, Key="team/vqgan_image/manifest.json", Body=b"[]")
    with pytest.raises(ValueError, match="not a `taming publish` manifest"):
        s3.fetch_published(uri, tmp_path / "reader3")


def test_publish_names_what_is_missing(tmp_path):
    (tmp_path / "empty" / "configs").mkdir(parents=True)
    failed = sh(tmp_path, "taming", "publish", str(tmp_path / "empty"), "s3://b/p", check=False)
    assert failed.returncode == 1
    assert f"{tmp_path / 'empty' / 'checkpoints' / 'last.ckpt'}: no checkpoint" in failed.stderr
    bad = sh(tmp_path, "taming", "publish", str(tmp_path / "empty"), "/local/path", check=False)
    assert bad.returncode == 2 and "uri: expected s3://bucket/prefix" in bad.stderr


def test_a_uri_cannot_lead_the_cache_outside_itself(s3_up, model_folder, project, tmp_path, monkeypatch):
    """S3 keys may hold '..': a model published under s3://bucket/../.. exists, and its cache
    path was built from the raw prefix, so reading it wrote outside the cache (17.9)."""
    bucket = s3_up.create_bucket("models-escape")
    publish(project, model_folder, f"s3://{bucket}/../..")
    assert f"../../vqgan_image/{CKPT}" in s3_up.objects(bucket)        # the attack is real
    cache = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("TAMING_S3_CACHE", str(cache))
    for uri in (f"s3://{bucket}/../../vqgan_image", f"s3://{bucket}/./x", f"s3://{bucket}/team//x",
                f"s3://{bucket}/team/.hidden", f"s3://{bucket}"):
        with pytest.raises(s3.PublishedModelError, match="refusing to cache it under .* not a plain folder name"):
            load_pretrained(uri)
    assert not (tmp_path / "a" / "b" / "vqgan_image").exists() and not cache.exists()
    assert s3.cache_folder(f"s3://{bucket}/team/vqgan_image/") == cache / bucket / "team" / "vqgan_image"


def test_the_local_copy_mirrors_the_manifest_exactly_after_a_republish(s3_up, model_folder, project, tmp_path,
                                                                       monkeypatch):
    """A republished model whose config was renamed (to a name that sorts first) left the old
    config in the cache, and `locate` took the stale one, the last in sort order."""
    bucket = s3_up.create_bucket("models-renamed")
    uri = f"s3://{bucket}/team/vqgan_image"
    monkeypatch.setenv("TAMING_S3_CACHE", str(tmp_path / "cache"))
    publish(project, model_folder, f"s3://{bucket}/team")
    first = ModelFolder.open(uri)
    assert first.config_path.name == Path(CONFIG).name
    ckpt_inode = first.checkpoint.stat().st_ino

    renamed = model_folder / "configs" / "2025-06-01T00-00-00-project.yaml"
    (model_folder / CONFIG).rename(renamed)
    with open(renamed, "a") as f:
        f.write("# retrained with another config\n")
    publish(project, model_folder, f"s3://{bucket}/team")
    assert f"team/vqgan_image/{CONFIG}" in s3_up.objects(bucket)      # the old object stays on S3

    second = ModelFolder.open(uri)
    assert second.config_path == second.root / "configs" / renamed.name
    local = s3.cache_folder(uri)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == \
        sorted([CKPT, f"configs/{renamed.name}", "manifest.json"])
    assert second.checkpoint.stat().st_ino == ckpt_inode              # unchanged: not downloaded again
    assert not [p for p in local.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert load_pretrained(uri) is not None
