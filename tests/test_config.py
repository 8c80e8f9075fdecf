"""Typed configs: bad parameters fail before work, naming the key; params.yaml is
validated once, as a whole, against its schema (tasks/config/)."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from tasks.config.params import validate
from tasks.config.typed import ConfigError, build, check, load_params

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
PROFILES = ["params.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "profiles").glob("*.yaml"))]


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


def test_load_params_with_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("s:\n  name: x\n  inner:\n    size: 2\n")
    data = load_params(p, ["s.inner.size=16", "s.top_k=5"])
    cfg = build(Outer, data["s"], "s")
    assert cfg.inner.size == 16 and cfg.top_k == 5
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, key", [
    ("vqgan.image=null", "vqgan.image"),
    ("vqgan.image.ddconfig.ch_mult=[]", "vqgan.image.ddconfig.ch_mult"),
    ("vqgan.image.ddconfig.dropout=2", "vqgan.image.ddconfig.dropout"),
    ("vqgan.image.base_learning_rate=.inf", "vqgan.image.base_learning_rate"),
    ("vqgan.image.resolution=15", "vqgan.image.resolution"),
    ("vqgan.image.model=depth", "vqgan.image.model"),
    ("transformer.betas=[2, 3]", "transformer.betas[0]"),
    ("transformer.weight_decay=-1", "transformer.weight_decay"),
    ("transformer.base_learning_rate=.nan", "transformer.base_learning_rate"),
    ("transformer.base_learning_rate=.inf", "transformer.base_learning_rate"),
    ("transformer.resid_pdrop=1.5", "transformer.resid_pdrop"),
    ("temperature=1.0e-40", "temperature"),
    ("temperature=1e-40", "temperature"),  # YAML 1.1 reads this as a string
    ("top_k=5000", "top_k"),
    ("top_k=2.5", "top_k"),
    ("sample.resolution=33", "sample.resolution"),
    ("sample.precision=fp8", "sample.precision"),
    ("vqgan.depth.resolution=64", "vqgan.depth.resolution"),
])
def test_out_of_range_values_are_refused_up_front(override, key):
    """Values that used to pass validation and then fail late or train garbage."""
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        validate(REPO / "params.yaml", [override])


@pytest.mark.parametrize("profile", PROFILES)
def test_no_parameter_is_named_like_a_key_dvc_ignores(profile):
    """DVC's run-cache drops every key named size or nfiles when it hashes a stage's params
    (treeverse/dvc#10296): changing such a parameter would check out stale outputs."""
    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)
    assert not {"size", "nfiles"} & set(keys(yaml.safe_load((REPO / profile).read_text())))
    validate(REPO / profile)  # and every profile is valid


def test_a_size_key_is_refused_with_the_reason(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("    resolution: 32", "    size: 32", 1))
    with pytest.raises(ConfigError, match=r"size.*run-cache ignores such keys"):
        validate(params)


def test_each_stage_gets_its_typed_section():
    c = validate(REPO / "params.yaml", ["top_k=7", "sample.per_condition=3"])
    assert c.sampling.top_k == 7 and c.sample.per_condition == 3
    assert c.vqgan["image"].model == "image" and c.vqgan["depth"].channels == 1
    assert c.transformer.learning_rate() == c.transformer.base_learning_rate * c.transformer.batch_size
