"""Load a first stage (a VQGAN) as the original project publishes it, and ours (same layout):

    model = load_first_stage("logs/vqgan_imagenet_f16_16384")   # folder, checkpoint (+ YAML) or s3://

Only the VQGAN targets (VQ_TARGETS) are built; no target string is ever imported. The
checkpoint is read by models/checkpoint.py, which runs no pickled code. Training-only keys
(`loss.*`: the discriminator, LPIPS) are dropped; other missing or unexpected keys are
reported (a warning, or an error with strict=True). Loading a transformer too is
models/pretrained.py, built on this; a stage that needs first stages only imports no
transformer code.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError, read_state_dict
from models.folder import locate, read_config
from models.limits import build_within_limits
from models.vqgan import GumbelVQ, VQModel, VQSegmentationModel

VQ_TARGETS: dict[str, type[VQModel]] = {
    "taming.models.vqgan.VQModel": VQModel,
    "taming.models.vqgan.GumbelVQ": GumbelVQ,
    "taming.models.vqgan.VQSegmentationModel": VQSegmentationModel,
}
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

    def check(self, strict: bool) -> None:
        """Warn about missing/unexpected keys, or raise with strict=True."""
        if self.missing or self.unexpected:
            msg = (f"{self.checkpoint}: {len(self.missing)} missing key(s) {self.missing[:10]}, "
                   f"{len(self.unexpected)} unexpected key(s) {self.unexpected[:10]} for {self.target}")
            if strict:
                raise CheckpointError(msg)
            warnings.warn(msg, stacklevel=3)


def load_first_stage(path: str | Path, config: str | Path | None = None, *, strict: bool = False,
                     map_location: str | torch.device = "cpu") -> VQModel:
    """A first stage's folder, checkpoint (its YAML: `config`, else ../configs/*-project.yaml)
    or s3:// URI -> the VQGAN in eval mode. Anything but a VQGAN target is refused."""
    ckpt_path, config_path = locate(path, config)
    model_cfg = read_config(config_path)
    state_dict, step = read_state_dict(ckpt_path)
    model = build_vqgan(model_cfg, config_path, state_dict)
    report = load_state(model, state_dict, ckpt_path, config_path, model_cfg["target"], step, map_location)
    report.check(strict)
    return model


def load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], ckpt_path: Path, config_path: Path,
               target: str, step: int | None, map_location) -> LoadReport:
    """Put a checkpoint's weights (training-only keys dropped) into ``model``, eval mode."""
    ignored = sorted(k for k in state_dict if _training_only(k))
    state_dict = {k: v for k, v in state_dict.items() if not _training_only(k)}
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches: the YAML does not describe this checkpoint
        raise CheckpointError(f"{ckpt_path} does not fit the model {config_path} describes: {e}") from None
    if not any(k in state_dict for k in model.state_dict()):
        raise CheckpointError(f"{ckpt_path}: none of its {len(state_dict)} keys (e.g. {list(state_dict)[:3]}) "
                              f"belongs to the {target} that {config_path} describes")
    model.to(map_location).eval()
    return LoadReport(ckpt_path, config_path, target, step, list(result.missing_keys),
                      list(result.unexpected_keys), ignored)


def _training_only(key: str) -> bool:
    # the VQGAN's loss module (discriminator, LPIPS), also inside a Net2Net's stages
    return key.startswith("loss.") or ".loss." in key


def build_vqgan(model_cfg: dict, source: str | Path = "config",
                state_dict: dict[str, torch.Tensor] | None = None, prefix: str = "") -> VQModel:
    """A VQGAN {target, params} -> the untrained model, refused with ModelTooLarge if it
    would be larger than models/limits.py allows (sized on the meta device first)."""
    return build_within_limits(lambda: construct_vqgan(model_cfg, source, state_dict, prefix), source)


def construct_vqgan(model_cfg: dict, source: str | Path, state_dict: dict[str, torch.Tensor] | None,
                    prefix: str = "") -> VQModel:
    """build_vqgan without the size check: for callers that already run inside one."""
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
