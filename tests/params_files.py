"""Params files for CLI tests: every pipeline command validates the whole params
file before work, so tests start from the repository's params.yaml and replace
only the sections they exercise."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_params(path: Path, **sections) -> Path:
    """The repository's params.yaml with some sections replaced, written to ``path``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(sections)
    path.write_text(yaml.safe_dump(params))
    return path
