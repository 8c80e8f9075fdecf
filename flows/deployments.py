"""Serve every deployment from one long-running process.

    python -m flows.deployments [--repo PATH] [--limit N]     (or: make prefect-serve)

Creates the deployments train-drin/train-drin, train-vqgan/train-vqgan,
sample/sample and extract-depth/extract-depth on the Prefect server named by
PREFECT_API_URL, then runs each flow run it is given in a subprocess. Runs
default to the checkout at ``--repo``; one run at a time by default, because
runs share that workspace (and DVC's lock on it).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType

from flows.dvc_tasks import resolve_repo
from flows.extract_depth import extract_depth
from flows.sample_sweep import sample_sweep
from flows.train import train_drin, train_vqgan

FLOWS = (train_drin, train_vqgan, sample_sweep, extract_depth)  # deployment name = flow name


def deployments(repo: Path) -> list:
    return [
        f.to_deployment(name=f.name, parameters={"repo": str(repo)},
                        entrypoint_type=EntrypointType.MODULE_PATH)  # importable from any working directory
        for f in FLOWS
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="pipeline checkout the runs work in (default: current directory)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs executed at once (default: %(default)s)")
    args = parser.parse_args(argv)
    serve(*deployments(resolve_repo(args.repo)), limit=args.limit)


if __name__ == "__main__":
    main()
