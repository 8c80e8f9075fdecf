"""Depth extraction fanned out in shards over a Prefect task runner.

    prefect deployment run extract-depth/extract-depth --param num_shards=8

The depth stage's own command (from dvc.yaml, e.g. ``taming annotate --kind depth``) runs once
per shard with ``--shard i --num-shards n``; shards are independent, so they
run concurrently on the flow's task runner: threads here (each shard is a
subprocess), Dask or Ray on a cluster (README, "Orchestration with Prefect").
When all shards are done, ``dvc commit`` records the stage in ``dvc.lock``
exactly as ``dvc repro`` would have, so the next ``dvc repro`` skips it.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.dvc_tasks import (
    DVC,
    dvc_output,
    pull_if_remote,
    push_if_pulled,
    repro_stage,
    resolve_repo,
    retry_options,
    stage_matches,
    stage_order,
    stream,
)

DEPTH_STAGE = "annotate@depth"


@task(task_run_name="{stage} shard {shard}/{num_shards}")
def run_shard(repo: Path, stage: str, command: str, shard: int, num_shards: int) -> None:
    stream(f"{command} --shard {shard} --num-shards {num_shards}", repo, f"{stage} shard {shard}/{num_shards}")


@task(task_run_name="dvc commit {stage}")
def commit_stage(repo: Path, stage: str) -> None:
    stream([*DVC, "commit", "--force", stage], repo, f"dvc commit {stage}")


# Threads only wait on shard subprocesses; num_shards sets how many run at once (up to 16).
@flow(name="extract-depth", task_runner=ThreadPoolTaskRunner(max_workers=16))
def extract_depth(
    repo: str = ".",
    num_shards: int = 4,
    stage: str = DEPTH_STAGE,
    sync_remote: bool | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
) -> list[str]:
    """Bring ``stage``'s inputs up to date, then compute it in ``num_shards`` parallel shards."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    root = resolve_repo(repo)
    logger = get_run_logger()
    opts = retry_options(retries, retry_delay_seconds)
    pushing = pull_if_remote(root, sync_remote)
    order = stage_order(root, [stage])
    sharded = [s for s in order if stage_matches(s, stage)]
    for upstream in (s for s in order if s not in sharded):
        repro_stage.with_options(**opts)(root, upstream)
    for name in sharded:
        if _up_to_date(root, name):
            logger.info("%s is up to date (dvc.lock matches its inputs): nothing to compute", name)
            continue
        command = _prepare(root, name)
        futures = [run_shard.with_options(**opts).submit(root, name, command, i, num_shards)
                   for i in range(num_shards)]
        wait(futures)
        for future in futures:
            future.result()  # raises the first failed shard's error
        commit_stage.with_options(**opts)(root, name)
    push_if_pulled(root, pushing, sync_remote, opts)
    return sharded


def _up_to_date(repo: Path, stage: str) -> bool:
    """``dvc status`` of the stage alone: its lock entry matches its deps, params and outs."""
    return json.loads(dvc_output(repo, "status", "--json", stage) or "{}") == {}


def _prepare(repo: Path, stage: str) -> str:
    """The stage's command, after removing its stale outputs as ``dvc repro`` would
    (outputs marked ``persist`` are kept, so a stage that resumes can resume)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo, dvc_repo.lock:
        (resolved,) = dvc_repo.stage.collect(f"{repo / 'dvc.yaml'}:{stage}")
        if not isinstance(resolved.cmd, str):
            raise ValueError(f"{repo}/dvc.yaml: stage {stage!r} has several commands; shard it as one command")
        resolved.remove_outs(ignore_remove=False, force=False)
        return resolved.cmd
