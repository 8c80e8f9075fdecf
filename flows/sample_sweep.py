"""A sweep over sampling settings: sample + evaluate per (top_k, top_p).

    prefect deployment run sample/sample --params '{"top_k": [50, 250], "top_p": [1.0, 0.9]}'

Every setting is checked first (a top_k above the codebook fails before any
work). Everything upstream of sampling is reproduced once (normally a no-op);
then, for each setting, the two parameters are written into params.yaml (only
their values' text changes) and the sampling stages are reproduced. DVC's
run-cache keeps every setting's outputs, so trying one of them again later
(``dvc exp run -S top_k=250``, or this flow) checks its results out instead of
sampling again. Each setting's grid is copied to
``data/sweeps/k<top_k>-p<top_p>/`` (``off`` for null); one table artifact holds
all settings' metrics, another shows their grids. params.yaml is restored at
the end, whatever happens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.artifacts import GRID_GLOB, find_grids, publish_grids, shown
from flows.dvc_tasks import (
    PARAMS_FILE,
    apply_overrides,
    metric_columns,
    params_restored,
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
    settings = [{"top_k": k, "top_p": p} for k in top_k for p in top_p]
    for setting in settings:  # a bad setting (top_k above the codebook) fails now, before any work
        apply_overrides(root, setting, check_only=True)
    order = stage_order(root, [SWEPT_STAGES[-1]])
    swept = [s for s in order if any(stage_matches(s, name) for name in SWEPT_STAGES)]
    for stage in order:
        if stage not in swept:
            repro_stage.with_options(**opts)(root, stage)

    original = {key: yaml.safe_load((root / PARAMS_FILE).read_text()).get(key) for key in ("top_k", "top_p")}
    rows, grids = [], []
    with params_restored(root, None, always=True):  # params.yaml as it was, whatever happens
        for setting in settings:
            logger.info("setting %s", setting)
            apply_overrides(root, setting)
            k, p = setting["top_k"], setting["top_p"]
            for stage in swept:
                repro_stage.with_options(**opts, task_run_name=f"{stage} top_k={k} top_p={p}")(root, stage)
            rows.append({**setting, **metric_columns(read_metrics(root))})
            grids += _keep_grids(root, grid_glob, root / SWEEP_DIR / f"k{_off(k)}-p{_off(p)}")
    # Leave the workspace as it was found: the original setting's outputs come
    # back from DVC's run-cache when that setting ran before.
    for stage in swept:
        repro_stage.with_options(**opts, task_run_name=f"{stage} (restore)")(root, stage)

    table = [{key: shown(value) for key, value in row.items()} for row in rows]
    create_table_artifact(table=table, key="sample-sweep",
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
