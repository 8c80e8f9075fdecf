"""Typed configs: bad parameters fail before work, naming the key."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from tasks.config import ConfigError, build, check, from_params


@dataclass
class Inner:
    size: int = 8
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    rate: float = 1e-3
    top_k: Optional[int] = None
    inner: Inner = field(default_factory=Inner)
    scales: list[float] = field(default_factory=lambda: [1.0])

    def __post_init__(self):
        check(self.top_k is None or self.top_k > 0, "top_k", "must be positive")


def test_builds_nested_and_coerces_ints_to_floats():
    cfg = build(Outer, {"name": "x", "rate": 1, "inner": {"size": 4}, "scales": [1, 0.5]})
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert cfg.inner == Inner(size=4) and cfg.scales == [1.0, 0.5]


@pytest.mark.parametrize("data, key", [
    ({"name": "x", "bogus": 1}, "s.bogus"),
    ({"name": "x", "inner": {"size": "big"}}, "s.inner.size"),
    ({"name": "x", "inner": {"kind": "c"}}, "s.inner.kind"),
    ({}, "s.name"),
    ({"name": "x", "scales": [1, "a"]}, "s.scales[1]"),
    ({"name": "x", "top_k": -3}, "top_k"),
])
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        build(Outer, data, "s")


def test_from_params_with_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("s:\n  name: x\n  inner:\n    size: 2\n")
    cfg = from_params(Outer, p, "s", ["s.inner.size=16", "s.top_k=5"])
    assert cfg.inner.size == 16 and cfg.top_k == 5
    with pytest.raises(ConfigError, match="not found"):
        from_params(Outer, tmp_path / "missing.yaml", "s")
