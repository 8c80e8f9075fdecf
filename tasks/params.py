"""One check of the whole ``params.yaml`` before any stage does any work.

Each stage validates its own section, but ``dvc repro`` runs stages in order:
a bad ``top_k`` would surface only after an hour of training. So every
pipeline command (``taming <stage>``, see tasks/cli.py) first builds *every*
section's typed config here; a bad value anywhere stops the first stage with a
message naming the key (``top_p: must be in (0, 1] ...``, ``vqgan.foo.model:
'foo' is not one of ...``, ``tokenize.cond: depth needs vqgan.depth``).
Building configs is cheap: no stage module imports torch at import time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tasks.config import ConfigError, build, load_params

SAMPLING = ("top_k", "top_p", "temperature")
SECTIONS = ("data", "extract", "depth", "segment", "vqgan", "tokenize", "transformer", "sample", "evaluate")


def validate(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> dict[str, object]:
    """Every section of the params file as its typed config; ConfigError naming the first bad key."""
    from tasks.acquire import DataConfig
    from tasks.depth import DepthConfig
    from tasks.evaluate import EvaluateConfig
    from tasks.extract import ExtractConfig
    from tasks.sample import SampleConfig, SamplingParams
    from tasks.segment import SegmentConfig
    from tasks.tokenize import TokenizeConfig
    from tasks.train_transformer import TransformerConfig
    from tasks.train_vqgan import config_for

    params = load_params(path, overrides)
    unknown = sorted(set(params) - set(SAMPLING) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)} "
                          f"(known: {', '.join(SAMPLING + SECTIONS)})")

    def section(name: str) -> dict:
        value = params.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping, got {value!r}")
        return value

    configs: dict[str, object] = {
        "sampling": build(SamplingParams, {k: params[k] for k in SAMPLING if k in params}),
        "data": build(DataConfig, section("data"), "data"),
        "extract": build(ExtractConfig, section("extract"), "extract"),
        "depth": build(DepthConfig, section("depth"), "depth"),
        "segment": build(SegmentConfig, section("segment"), "segment"),
        "vqgan": {name: config_for(params, name) for name in section("vqgan")},
        "tokenize": build(TokenizeConfig, section("tokenize"), "tokenize"),
        "transformer": build(TransformerConfig, section("transformer"), "transformer"),
        "sample": build(SampleConfig, section("sample"), "sample"),
        "evaluate": build(EvaluateConfig, section("evaluate"), "evaluate"),
    }
    tokenize, vqgans = configs["tokenize"], configs["vqgan"]
    if tokenize.image_model not in vqgans:
        raise ConfigError(f"tokenize.image_model: {tokenize.image_model!r} is not a configured VQGAN "
                          f"(vqgan: {', '.join(vqgans) or 'none'})")
    if tokenize.cond in ("depth", "segmentation") and tokenize.cond not in vqgans:
        raise ConfigError(f"tokenize.cond: {tokenize.cond} needs vqgan.{tokenize.cond} "
                          f"(vqgan: {', '.join(vqgans) or 'none'})")
    return configs
