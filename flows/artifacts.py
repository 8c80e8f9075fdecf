"""What a finished run publishes in the Prefect UI: a table of the metrics and
the sample grids as pictures. Artifact keys (lowercase, digits, dashes) keep each
one's history across runs on the Artifacts page."""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.dvc_tasks import read_metrics

GRID_GLOB = "data/samples/**/*grid*.png"  # where the sample stage writes its grids
INLINE_PX = 2048  # a larger grid is shown reduced to this (its file keeps every pixel)


def find_grids(repo: Path, pattern: str = GRID_GLOB) -> list[Path]:
    return sorted(p for p in repo.glob(pattern) if p.is_file())


def shown(value: Any) -> Any:
    """A metric as a table shows it: floats to 4 significant digits."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


@task(task_run_name="publish metrics")
def publish_metrics(repo: Path, key: str) -> dict[str, dict[str, Any]]:
    """A table artifact of ``dvc metrics show`` (the pipeline's headline metrics), rounded:
    one row per (file, metric), in the order DVC lists them."""
    metrics = read_metrics(repo)
    rows = [{"file": path, "metric": name, "value": shown(value)}
            for path, values in metrics.items() for name, value in values.items()]
    if not rows:
        get_run_logger().warning("no metrics in %s (dvc metrics show is empty)", repo)
    create_table_artifact(table=rows or [{"file": None, "metric": None, "value": None}], key=key,
                          description=f"`dvc metrics show` in `{repo}`; every value: "
                                      f"`dvc metrics show metrics/` (full precision)")
    return metrics


def inline_png(path: Path) -> str:
    """A data: URI of the PNG at ``path`` (reduced to INLINE_PX if larger), which the Prefect UI
    shows as a picture where a file:// link would open nothing."""
    from PIL import Image

    from tasks.data.images import open_image

    data = path.read_bytes()
    with open_image(data, str(path)) as im:
        if max(im.size) > INLINE_PX:
            im.thumbnail((INLINE_PX, INLINE_PX), Image.NEAREST)
            buffer = io.BytesIO()
            im.save(buffer, format="PNG")
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


@task(task_run_name="publish grids")
def publish_grids(repo: Path, key: str, grids: Sequence[Path]) -> str:
    """A markdown artifact showing each sample grid, under its path in the checkout."""
    parts = [f"**{grid.relative_to(repo)}**\n\n![{grid.relative_to(repo)}]({inline_png(grid)})" for grid in grids]
    markdown = "\n\n".join(parts) if grids else f"No sample grid found under `{repo}`."
    create_markdown_artifact(markdown=markdown, key=key, description=f"sample grids in `{repo}`")
    return markdown
