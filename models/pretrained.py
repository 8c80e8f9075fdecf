"""Load checkpoints as the original project publishes them, and ours (same layout):

    folder/checkpoints/last.ckpt + folder/configs/<timestamp>-project.yaml

    model = load_pretrained("logs/2020-11-09T13-31-51_sflckr")      # a folder
    model = load_pretrained("x/last.ckpt", config="x/project.yaml")  # checkpoint + YAML
    model = load_pretrained("s3://bucket/team/vqgan_image")  # published with `taming publish`

Finding the files of a folder (and what it holds without loading it) is models/folder.py.

The YAML's `model.target` picks one of a fixed set of classes (TARGETS); no target
string is ever imported. build_model and build_vqgan go through
models.limits.build_within_limits: a model a YAML describes is sized on the meta device
before it is built (`n_embed: 2147483648` would take 64 GiB). The checkpoint is read
by models/checkpoint.py, which runs no pickled code. Training-only keys (`loss.*`) are dropped; other missing or unexpected
keys are reported (a warning, or an error with strict=True). A Net2NetTransformer's
first and cond stages are built from their configs inside its YAML and take their
weights from its checkpoint: their `ckpt_path`s are never opened.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError, read_state_dict
from models.folder import NET2NET, locate, read_config
from models.limits import build_within_limits
from models.vqgan import GumbelVQ, VQModel, VQSegmentationModel

VQ_TARGETS: dict[str, type[VQModel]] = {
    "taming.models.vqgan.VQModel": VQModel,
    "taming.models.vqgan.GumbelVQ": GumbelVQ,
    "taming.models.vqgan.VQSegmentationModel": VQSegmentationModel,
}
TARGETS = (*VQ_TARGETS, NET2NET)
# VQ params that only matter to the original's training code (checkpoint to warm-start
# from, data key, checkpoint metric); the models accept everything else in the YAML
VQ_TRAINING_ONLY = ("ckpt_path", "ignore_keys", "image_key", "monitor")


@dataclasses.dataclass
class LoadReport:
    checkpoint: Path
    config: Path
    target: str
    global_step: int | None
    missing: list[str]      # model keys the checkpoint lacks
    unexpected: list[str]   # checkpoint keys the model does not have
    ignored: list[str]      # training-only keys dropped on purpose (loss.*)


def load_pretrained(path: str | Path, config: str | Path | None = None, *, strict: bool = False,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    """A folder, a checkpoint (its YAML: `config`, else ../configs/*-project.yaml) or the
    s3:// URI of a published folder (models.s3.fetch_published) -> the model in eval mode.
    Missing/unexpected keys warn, or raise ValueError with strict=True."""
    model, report = load_with_report(path, config, map_location=map_location)
    if report.missing or report.unexpected:
        msg = (f"{report.checkpoint}: {len(report.missing)} missing key(s) {report.missing[:10]}, "
               f"{len(report.unexpected)} unexpected key(s) {report.unexpected[:10]} for {report.target}")
        if strict:
            raise CheckpointError(msg)
        warnings.warn(msg, stacklevel=2)
    return model


def load_with_report(path: str | Path, config: str | Path | None = None, *,
                     map_location: str | torch.device = "cpu") -> tuple[nn.Module, LoadReport]:
    ckpt_path, config_path = locate(path, config)
    model_cfg = read_config(config_path)
    state_dict, step = read_state_dict(ckpt_path)
    model = build_model(model_cfg, source=config_path, state_dict=state_dict)
    ignored = sorted(k for k in state_dict if _training_only(k))
    state_dict = {k: v for k, v in state_dict.items() if not _training_only(k)}
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches: the YAML does not describe this checkpoint
        raise CheckpointError(f"{ckpt_path} does not fit the model {config_path} describes: {e}") from None
    if not any(k in state_dict for k in model.state_dict()):
        raise CheckpointError(f"{ckpt_path}: none of its {len(state_dict)} keys (e.g. {list(state_dict)[:3]}) "
                         f"belongs to the {model_cfg['target']} that {config_path} describes")
    model.to(map_location).eval()
    return model, LoadReport(ckpt_path, config_path, model_cfg["target"], step,
                             list(result.missing_keys), list(result.unexpected_keys), ignored)


def _training_only(key: str) -> bool:
    # the VQGAN's loss module (discriminator, LPIPS), also inside a Net2Net's stages
    return key.startswith("loss.") or ".loss." in key


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
        return _build_vqgan(model_cfg, source, state_dict)
    if target != NET2NET:
        raise CheckpointError(f"{source}: unsupported model target {target!r}; known: {', '.join(TARGETS)}")
    from models.net2net import Net2NetTransformer

    if "first_stage_config" not in params:
        raise CheckpointError(f"{source}: a Net2NetTransformer config needs model.params.first_stage_config")
    first_stage = _build_vqgan(params.pop("first_stage_config"), f"{source} first_stage_config",
                               state_dict, prefix="first_stage_model.")
    cond_stage = None
    cond_cfg = params.get("cond_stage_config")
    if isinstance(cond_cfg, dict) and cond_cfg.get("target") in VQ_TARGETS:
        cond_stage = _build_vqgan(params.pop("cond_stage_config"), f"{source} cond_stage_config",
                                  state_dict, prefix="cond_stage_model.")
    # other cond stages (class label, SOS, coordinates, the first stage) carry no weights of
    # their own: Net2NetTransformer builds them from cond_stage_config
    try:
        return Net2NetTransformer.from_original_config(params, first_stage, cond_stage)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: params for {target} do not fit: {e}") from None


def build_vqgan(model_cfg: dict, source: str | Path = "config",
                state_dict: dict[str, torch.Tensor] | None = None, prefix: str = "") -> VQModel:
    """A VQGAN {target, params} -> the untrained model, refused with ModelTooLarge if it
    would be larger than models/limits.py allows."""
    return build_within_limits(lambda: _build_vqgan(model_cfg, source, state_dict, prefix), source)


def _build_vqgan(model_cfg: dict, source: str | Path, state_dict: dict[str, torch.Tensor] | None,
                 prefix: str = "") -> VQModel:
    target = model_cfg.get("target")
    if target not in VQ_TARGETS:
        raise CheckpointError(f"{source}: expected a VQGAN target ({', '.join(VQ_TARGETS)}), got {target!r}")
    params = {k: v for k, v in (model_cfg.get("params") or {}).items() if k not in VQ_TRAINING_ONLY}
    remap, used = params.get("remap"), f"{prefix}quantize.used"
    if isinstance(remap, str) and not os.path.exists(remap) and state_dict is not None and used in state_dict:
        params["remap"] = state_dict[used]  # the used-code list is saved as a buffer, too
    try:
        return VQ_TARGETS[target](**params)
    except (TypeError, ValueError, OSError) as e:   # OSError: a remap file that is missing or not a file
        raise CheckpointError(f"{source}: params for {target} do not fit: {e}") from None
