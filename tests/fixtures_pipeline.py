"""The smoke pipeline in a temporary copy of the repository.

``make_smoke_repo(dest)`` copies the working tree (tracked files plus untracked
files git does not ignore, so uncommitted work is tested too), commits it to a
fresh git repository (DVC is already initialised: ``.dvc/config`` is tracked),
and replaces ``params.yaml`` by ``profiles/smoke.yaml``: tiny sizes, a few steps.
Nothing has run yet; ``run_dvc(repo, "repro")`` runs the pipeline.

Stages call the ``taming`` command, so ``pipeline_env()`` puts this
interpreter's scripts directory first on PATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from params_files import with_conditioning
from processes import run_bounded

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_PROFILE = "profiles/smoke.yaml"


def pipeline_env() -> dict[str, str]:
    """Environment for running dvc/taming: the venv's bin first, no analytics, one thread."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=smoke", "-c", "user.email=smoke@localhost", "-c", "commit.gpgsign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout


def working_tree_files(root: Path = REPO_ROOT) -> list[str]:
    """Tracked and untracked-but-not-ignored files that exist on disk."""
    out = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted({p for p in out.split("\0") if p and (root / p).is_file()})


def make_smoke_repo(dest: str | Path, conditioning: str = "depth", profile: str = SMOKE_PROFILE) -> Path:
    """Copy the working tree to ``dest`` as a fresh git+DVC repo with the smoke params
    (switched to ``conditioning``: tests/params_files.with_conditioning)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in working_tree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, target)
    shutil.copyfile(dest / profile, dest / "params.yaml")
    if conditioning != "depth":
        params = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(with_conditioning(params, conditioning), sort_keys=False))
    (dest / "dvc.lock").unlink(missing_ok=True)  # a lock from the source checkout describes other outputs
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "smoke copy")
    return dest


def run_dvc(repo: str | Path, *args: str, check: bool = True, cpu_s: float = 900) -> subprocess.CompletedProcess:
    """Run ``dvc ARGS`` in ``repo`` with this interpreter's DVC; output captured as text.
    Bounded by CPU time (the smoke pipeline needs about a minute of it), not wall time."""
    proc = run_bounded([sys.executable, "-m", "dvc", *args], cwd=repo, env=pipeline_env(), cpu_s=cpu_s)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def smoke_repo(tmp_path) -> Path:
    """A fresh, not yet reproduced copy of the repository on the smoke profile."""
    return make_smoke_repo(tmp_path / "repo")
