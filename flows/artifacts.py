"""What a finished run publishes in the Prefect UI: a table of the metrics and
the sample grids (paths, as links). Artifact keys (lowercase, digits, dashes)
keep each one's history across runs on the Artifacts page."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.dvc_tasks import read_metrics

GRID_GLOB = "data/samples/**/*grid*.png"  # where the sample stage writes its grids


def find_grids(repo: Path, pattern: str = GRID_GLOB) -> list[Path]:
    return sorted(p for p in repo.glob(pattern) if p.is_file())


@task(task_run_name="publish metrics")
def publish_metrics(repo: Path, key: str) -> dict[str, dict[str, Any]]:
    """A table artifact of ``dvc metrics show``: one row per (file, metric)."""
    metrics = read_metrics(repo)
    rows = [{"file": path, "metric": name, "value": value}
            for path, values in metrics.items() for name, value in values.items()]
    if not rows:
        get_run_logger().warning("no metrics in %s (dvc metrics show is empty)", repo)
    create_table_artifact(table=rows or [{"file": None, "metric": None, "value": None}], key=key,
                          description=f"`dvc metrics show` in `{repo}`")
    return metrics


@task(task_run_name="publish grids")
def publish_grids(repo: Path, key: str, grids: Sequence[Path]) -> str:
    """A markdown artifact listing the sample grids as ``file://`` links."""
    lines = ["| grid | bytes |", "| --- | --- |"]
    lines += [f"| [{grid.relative_to(repo)}]({grid.as_uri()}) | {grid.stat().st_size} |" for grid in grids]
    markdown = "\n".join(lines) if grids else f"No sample grid found under `{repo}`."
    create_markdown_artifact(markdown=markdown, key=key, description=f"sample grids in `{repo}`")
    return markdown
