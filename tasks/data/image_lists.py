"""Text files that list images, one path per line: the original's "train on your own
images" route (data.source custom, and FileListDataset)."""
from __future__ import annotations

from pathlib import Path

from tasks.runtime.errors import StageError


def read_image_list(path: str | Path) -> list[Path]:
    """Image paths listed in a text file (one per line; relative to the list's folder); all must exist."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: image list not found")
    images = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            image = path.parent / line.strip()
            if not image.is_file():
                raise StageError(f"{path}:{n}: image {line.strip()!r} not found (looked at {image})")
            images.append(image)
    if not images:
        raise StageError(f"{path}: lists no images")
    return images
