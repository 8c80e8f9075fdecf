"""Load checkpoints as the original project publishes them, and ours (same layout):

    folder/checkpoints/last.ckpt + folder/configs/<timestamp>-project.yaml

    model = load_pretrained("logs/2020-11-09T13-31-51_sflckr")      # a folder
    model = load_pretrained("x/last.ckpt", config="x/project.yaml")  # checkpoint + YAML
    model = load_pretrained("s3://bucket/team/vqgan_image")  # published with `taming publish`

Any target of TARGETS: the VQGANs (models/first_stage.py) and the Net2NetTransformer. Finding
the files of a folder (and what it holds without loading it) is models/folder.py. No target
string is ever imported; the checkpoint is read without running pickled code. A
Net2NetTransformer's first and cond stages are built from their configs inside its YAML and
take their weights from its checkpoint: their `ckpt_path`s are never opened. A model a
YAML describes is sized on the meta device before it is built (models/limits.py):
`n_embed: 2147483648` would take 64 GiB.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError, read_state_dict
from models.first_stage import VQ_TARGETS, VQ_TRAINING_ONLY, LoadReport, build_vqgan, construct_vqgan, load_state  # noqa: F401 (public)
from models.folder import NET2NET, locate, read_config
from models.limits import build_within_limits

TARGETS = (*VQ_TARGETS, NET2NET)


def load_pretrained(path: str | Path, config: str | Path | None = None, *, strict: bool = False,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """A folder, a checkpoint (its YAML: `config`, else ../configs/*-project.yaml) or the
    s3:// URI of a published folder (models.s3.fetch_published) -> the model in eval mode.
    Missing/unexpected keys warn, or raise CheckpointError with strict=True."""
    model, report = load_with_report(path, config, map_location=map_location)
    report.check(strict)
    return model


def load_with_report(path: str | Path, config: str | Path | None = None, *,
                     map_location: str | torch.device = "cpu") -> tuple[nn.Module, LoadReport]:
    ckpt_path, config_path = locate(path, config)
    model_cfg = read_config(config_path)
    state_dict, step = read_state_dict(ckpt_path)
    model = build_model(model_cfg, source=config_path, state_dict=state_dict)
    report = load_state(model, state_dict, ckpt_path, config_path, model_cfg["target"], step, map_location)
    return model, report


# ---- models from the original YAML -------------------------------------------------

def build_model(model_cfg: dict, source: str | Path = "config",
                state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """{target, params} -> an untrained model of one of the TARGETS classes, refused with
    ModelTooLarge if it would be larger than models/limits.py allows.
    `state_dict` (the checkpoint's) only supplies `remap` code lists whose .npy is absent."""
    return build_within_limits(lambda: _build_model(model_cfg, source, state_dict), source)


def _build_model(model_cfg: dict, source: str | Path, state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    target, params = model_cfg["target"], dict(model_cfg.get("params") or {})
    if target in VQ_TARGETS:
        return construct_vqgan(model_cfg, source, state_dict)
    if target != NET2NET:
        raise CheckpointError(f"{source}: unsupported model target {target!r}; known: {', '.join(TARGETS)}")
    from models.net2net import Net2NetTransformer

    if "first_stage_config" not in params:
        raise CheckpointError(f"{source}: a Net2NetTransformer config needs model.params.first_stage_config")
    first_stage = construct_vqgan(params.pop("first_stage_config"), f"{source} first_stage_config",
                               state_dict, prefix="first_stage_model.")
    cond_stage = None
    cond_cfg = params.get("cond_stage_config")
    if isinstance(cond_cfg, dict) and cond_cfg.get("target") in VQ_TARGETS:
        cond_stage = construct_vqgan(params.pop("cond_stage_config"), f"{source} cond_stage_config",
                                  state_dict, prefix="cond_stage_model.")
    # other cond stages (class label, SOS, coordinates, the first stage) carry no weights of
    # their own: Net2NetTransformer builds them from cond_stage_config
    try:
        return Net2NetTransformer.from_original_config(params, first_stage, cond_stage)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: params for {target} do not fit: {e}") from None
