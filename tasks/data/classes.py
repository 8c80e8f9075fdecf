"""Class labels, defined once: a synset's label is its index in acquire's synsets.json.

For ImageNet that index is the synset's position in sorted synset order, the standard
ImageNet class index (so class 9 is an ostrich for this pipeline as for the published
class-conditional model); the demo numbers its object kinds 0..C-1; a custom image list
is class 0. Every split and every subset (``sub_indices``) sees the same numbers, so a
class missing from one split shifts nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def str_to_indices(string: str) -> list[int]:
    """'32-123, 256' -> [32, ..., 122, 256], exactly as the original taming repo parses it."""
    if not string.strip() or string.strip().endswith(","):
        raise ValueError(f"{string!r}: expected e.g. '32-123, 256' (no trailing comma)")
    indices = []
    for sub in string.split(","):
        bounds = sub.split("-")
        if len(bounds) == 1:
            indices.append(int(bounds[0]))
        elif len(bounds) == 2:
            indices.extend(range(int(bounds[0]), int(bounds[1])))
        else:
            raise ValueError(f"{string!r}: bad range {sub.strip()!r}")
    return sorted(indices)


@dataclass(frozen=True)
class ClassTable:
    """synset -> (label, human-readable name), from synsets.json."""
    labels: dict[str, int]
    names: dict[str, str]

    @classmethod
    def read(cls, path: str | Path) -> "ClassTable":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (run `taming acquire` first)")
        try:
            info = json.loads(path.read_text())
            labels = {s: int(v["index"]) for s, v in info.items()}
            names = {s: str(v.get("human", s)) for s, v in info.items()}
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"{path}: expected {{synset: {{\"index\": int, \"human\": str}}}} ({e})") from None
        if len(set(labels.values())) != len(labels) or min(labels.values(), default=0) < 0:
            raise ValueError(f"{path}: class indices must be distinct and >= 0")
        return cls(labels, names)

    @property
    def n_classes(self) -> int:
        """Labels run from 0 to n_classes - 1 (a subset may leave some unused)."""
        return max(self.labels.values(), default=-1) + 1

    def label(self, synset: str) -> int:
        try:
            return self.labels[synset]
        except KeyError:
            raise KeyError(f"synset {synset!r} is not in synsets.json") from None

    def name(self, synset: str) -> str:
        return self.names.get(synset, synset)

    def selected(self, sub_indices: str) -> set[str]:
        """The synsets whose index ``sub_indices`` ("32-123, 256") selects; all for ''."""
        if not sub_indices:
            return set(self.labels)
        wanted = set(str_to_indices(sub_indices))
        return {s for s, i in self.labels.items() if i in wanted}
