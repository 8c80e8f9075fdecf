"""``taming share push | pull``: what ``make push`` / ``make pull`` run (README, "Sharing through S3").

``dvc push --run-cache`` sends the outputs recorded in dvc.lock and the run-cache's entries
(which outputs a stage produced from which inputs), but not the outputs of the other
entries: a setting tried in a sweep (``top_k=250``) whose results are not in dvc.lock
would be listed as seen by a clone, yet have nothing to check out, and run again. So:

- ``push``: ``dvc push --run-cache``, then every object the run-cache's entries refer to;
- ``pull``: ``dvc pull --run-cache --allow-missing`` (the workspace, as far as the remote
  has it, and the entries), then the objects of every entry into the local cache (not the
  workspace). ``dvc repro`` / ``dvc exp run``
  then check out any stage already run with the same inputs, anywhere, instead of running it.

Objects are content-addressed, so both transfer only what the other side lacks.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tasks.runtime.errors import StageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["push", "pull"])
    parser.add_argument("-r", "--remote", help="DVC remote (default: the repository's default remote)")
    parser.add_argument("-j", "--jobs", type=int, help="parallel transfers (default: DVC's)")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: the current directory)")


def run_cache_entries(repo) -> list[tuple[str, str]]:
    """(stage key, entry) of every run-cache entry in the local cache."""
    runs = Path(repo.stage_cache.cache_dir)
    return sorted((key.name, entry.name) for key in runs.glob("*/*") for entry in key.iterdir()) \
        if runs.is_dir() else []


def transfer_run_cache_outputs(root: Path, action: str, remote: str | None, jobs: int | None) -> tuple[int, int]:
    """Push (or fetch) the objects every run-cache entry refers to: (transferred, failed)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        entries = run_cache_entries(repo)
        used = repo.stage_cache.get_used_objs(entries, remote=remote, force=True, jobs=jobs)
        objs = set().union(*used.values()) if used else set()
        transfer = repo.cloud.push if action == "push" else repo.cloud.pull
        result = transfer(objs, jobs=jobs, remote=remote) if objs else None
    done, failed = (len(result.transferred), len(result.failed)) if result else (0, 0)
    print(f"{action}: {len(entries)} run-cache entries, {len(objs)} objects they refer to: "
          f"{done} transferred, {failed} failed", flush=True)
    return done, failed


def main(args: argparse.Namespace) -> int:
    root = Path(args.repo).resolve()
    options = [*(["-r", args.remote] if args.remote else []), *(["-j", str(args.jobs)] if args.jobs else [])]
    # the workspace's outputs and the run-cache entries, with DVC's own progress and messages;
    # an output the remote lacks is not an error for pull: `dvc repro` computes it
    missing = ["--allow-missing"] if args.action == "pull" else []
    dvc = subprocess.run([sys.executable, "-m", "dvc", args.action, "--run-cache", *missing, *options], cwd=root)
    if dvc.returncode != 0:
        raise StageError(f"dvc {args.action} --run-cache failed (exit code {dvc.returncode}); see its message above")
    _, failed = transfer_run_cache_outputs(root, args.action, args.remote, args.jobs)
    if failed:  # e.g. removed by `dvc gc`, or never pushed by an older `dvc push --run-cache`
        print(f"warning: {failed} of them are on neither side; a stage whose outputs they are runs again "
              f"where it is needed", file=sys.stderr)
    return 0
