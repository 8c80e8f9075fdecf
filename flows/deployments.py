"""Serve every deployment from one long-running process.

    python -m flows.deployments [--repo PATH] [--limit N] [--wait S]     (or: make prefect-serve)

Waits for the Prefect server named by PREFECT_API_URL to answer (``--wait``
seconds at most: started together with ``make prefect-server``, the server
needs a moment), creates the deployments train-drin/train-drin,
train-vqgan/train-vqgan, sample/sample and extract-depth/extract-depth there,
then runs each flow run it is given in a subprocess. Runs default to the
checkout at ``--repo``; one run at a time by default, because runs share that
workspace (and DVC's lock on it).
"""
from __future__ import annotations

import argparse
import time
import urllib.request
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.settings import PREFECT_API_URL

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


def wait_for_server(api_url: str | None, timeout: float) -> None:
    """Return once the Prefect server at ``api_url`` answers its health check; exit with a
    message saying what to do if it does not within ``timeout`` seconds."""
    if not api_url:
        raise SystemExit("PREFECT_API_URL is not set: start a server with `make prefect-server` and serve with "
                         "`make prefect-serve` (both set it), or export PREFECT_API_URL=http://HOST:PORT/api")
    deadline, waiting = time.monotonic() + timeout, False
    while True:
        try:
            with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=5) as response:
                if response.status == 200:
                    if waiting:
                        print(f"Prefect server at {api_url} is up", flush=True)
                    return
        except OSError as e:  # refused while it starts; HTTP errors are OSErrors too
            reason = e
        if time.monotonic() >= deadline:
            raise SystemExit(f"No Prefect server answers at {api_url} after {timeout:.0f} s ({reason}). Start one "
                             f"with `make prefect-server` (with the same PREFECT_PORT), or set PREFECT_API_URL.")
        if not waiting:
            print(f"waiting up to {timeout:.0f} s for the Prefect server at {api_url} "
                  f"(`make prefect-server` starts it)", flush=True)
            waiting = True
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="pipeline checkout the runs work in (default: current directory)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs executed at once (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=120, metavar="S",
                        help="seconds to wait for the Prefect server to answer (default: %(default)s)")
    args = parser.parse_args(argv)
    repo = resolve_repo(args.repo)
    wait_for_server(PREFECT_API_URL.value(), args.wait)
    serve(*deployments(repo), limit=args.limit)


if __name__ == "__main__":
    main()
