"""A sweep over sampling settings: sample + evaluate per (top_k, top_p).

    prefect deployment run sample/sample --params '{"top_k": [50, 250], "top_p": [1.0, 0.9]}'

Everything upstream of sampling is reproduced once (normally a no-op); then,
for each setting, the parameters are set as ``dvc exp run -S`` sets them and
the sampling stages are reproduced. DVC's run-cache keeps every setting's
outputs, so trying one of them again later (``dvc exp run -S top_k=250``, or
this flow) checks its results out instead of sampling again. Each setting's
grid is copied to ``data/sweeps/k<top_k>-p<top_p>/`` (``off`` for null); one
table artifact holds all settings' metrics. The original parameters are
restored at the end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.artifacts import GRID_GLOB, find_grids, publish_grids
from flows.dvc_tasks import (
    apply_overrides,
    metric_columns,
    read_metrics,
    repro_stage,
    resolve_repo,
    retry_options,
    stage_matches,
    stage_order,
)
from tasks.data.files import write_bytes

SWEPT_STAGES = ("sample", "evaluate")  # the stages that read top_k / top_p, in order
SWEEP_DIR = "data/sweeps"


@flow(name="sample")
def sample_sweep(
    repo: str = ".",
    top_k: tuple[int | None, ...] = (50, 100, 250),
    top_p: tuple[float | None, ...] = (None,),
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
    grid_glob: str = GRID_GLOB,
) -> list[dict[str, Any]]:
    """Sample and evaluate every combination of ``top_k`` x ``top_p`` (null: that filter
    off, as in params.yaml); returns the table, one row per setting."""
    root = resolve_repo(repo)
    logger = get_run_logger()
    opts = retry_options(retries, retry_delay_seconds)
    order = stage_order(root, [SWEPT_STAGES[-1]])
    swept = [s for s in order if any(stage_matches(s, name) for name in SWEPT_STAGES)]
    for stage in order:
        if stage not in swept:
            repro_stage.with_options(**opts)(root, stage)

    params = yaml.safe_load((root / "params.yaml").read_text())
    original = {"top_k": params.get("top_k"), "top_p": params.get("top_p")}
    rows, grids = [], []
    try:
        for k in top_k:
            for p in top_p:
                setting = {"top_k": k, "top_p": p}
                logger.info("setting %s", setting)
                apply_overrides(root, setting)
                for stage in swept:
                    repro_stage.with_options(**opts, task_run_name=f"{stage} top_k={k} top_p={p}")(root, stage)
                rows.append({**setting, **metric_columns(read_metrics(root))})
                grids += _keep_grids(root, grid_glob, root / SWEEP_DIR / f"k{_off(k)}-p{_off(p)}")
    finally:
        apply_overrides(root, original)
    # Leave the workspace as it was found: the original setting's outputs come
    # back from DVC's run-cache when that setting ran before.
    for stage in swept:
        repro_stage.with_options(**opts, task_run_name=f"{stage} (restore)")(root, stage)

    create_table_artifact(table=rows, key="sample-sweep",
                          description=f"metrics per sampling setting in `{root}` (params restored to {original})")
    publish_grids(root, key="sample-sweep-grids", grids=grids)
    return rows


def _off(value: float | None) -> str:
    return "off" if value is None else str(value)


def _keep_grids(root: Path, pattern: str, dest: Path) -> list[Path]:
    """Copy this setting's grids out of the sample stage's output, which the next setting overwrites."""
    kept = []
    for grid in find_grids(root, pattern):
        write_bytes(dest / grid.name, grid.read_bytes())
        kept.append(dest / grid.name)
    return kept
