"""Training flows: the whole D-RIN pipeline, or only the VQGAN first stages.

    prefect deployment run train-drin/train-drin
    prefect deployment run train-drin/train-drin --params '{"overrides": {"top_k": 250}}'
    prefect deployment run train-vqgan/train-vqgan

Each DVC stage is one task (the UI shows each), reproduced through DVC.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.artifacts import GRID_GLOB, find_grids, publish_grids, publish_metrics
from flows.dvc_tasks import apply_overrides, params_restored, reproduce, resolve_repo


@flow(name="train-drin")
def train_drin(
    repo: str = ".",
    overrides: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    sync_remote: bool | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
    grid_glob: str = GRID_GLOB,
) -> dict[str, Any]:
    """Reproduce the depth-conditioned (D-RIN) pipeline stage by stage.

    Args:
        repo: the pipeline checkout (the deployment sets it to the served one).
        overrides: parameters to set first, e.g. ``{"top_k": 250}``: the whole params.yaml is checked
            before it is written, and put back if the run fails.
        targets: stages to reproduce with everything upstream; all of dvc.yaml when empty.
        sync_remote: ``dvc pull`` before and ``dvc push`` after, if a DVC remote is configured;
            None (auto): an unreachable remote is a warning; True: required; False: off.
        retries, retry_delay_seconds: per stage; the delay doubles on each retry.
        grid_glob: where the sample grids are, for the artifact.
    """
    root = resolve_repo(repo)
    with params_restored(root, overrides):  # a run that fails leaves params.yaml as it found it
        apply_overrides(root, overrides or {})
        stages = reproduce(root, targets, sync_remote=sync_remote, retries=retries,
                           retry_delay_seconds=retry_delay_seconds)
    metrics = publish_metrics(root, key="train-drin-metrics")
    publish_grids(root, key="train-drin-samples", grids=find_grids(root, grid_glob))
    return {"stages": stages, "metrics": metrics}


@flow(name="train-vqgan")
def train_vqgan(
    repo: str = ".",
    overrides: dict[str, Any] | None = None,
    sync_remote: bool | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
) -> dict[str, Any]:
    """Reproduce every ``train-vqgan@…`` stage (image, depth, …) and what they need."""
    root = resolve_repo(repo)
    with params_restored(root, overrides):
        apply_overrides(root, overrides or {})
        stages = reproduce(root, ["train-vqgan"], sync_remote=sync_remote, retries=retries,
                           retry_delay_seconds=retry_delay_seconds)
    return {"stages": stages, "metrics": publish_metrics(root, key="train-vqgan-metrics")}
