"""Condition stages that are not VQGANs: class label, unconditional SOS, coordinates, scenes.

Each has the first-stage interface the Net2Net transformer calls,
`encode(c) -> (quant, None, indices (B, n))`, like the original's Labelator,
SOSProvider (taming/modules/util.py), CoordStage (taming/modules/misc/coord.py) and
DummyCondStage (taming/models/dummy_cond_stage.py), so a conditioning model can be
swapped without touching the transformer.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F


class SOSProvider(nn.Module):
    """Unconditional models: every sequence starts with one start-of-sequence token."""

    def __init__(self, sos_token: int):
        super().__init__()
        self.sos_token = int(sos_token)

    def encode(self, x: torch.Tensor):
        tokens = torch.full((x.shape[0], 1), self.sos_token, dtype=torch.int64, device=x.device)
        return tokens, None, tokens


class Labelator(nn.Module):
    """Class-conditional models: the class label is the one prefix token."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = int(n_classes)

    def encode(self, c: torch.Tensor):
        c = torch.as_tensor(c).long().reshape(-1, 1)
        if c.numel() and (c.min() < 0 or c.max() >= self.n_classes):
            raise ValueError(f"class labels must be in [0, {self.n_classes}), got {c.min().item()}..{c.max().item()}")
        return c, None, c


class CoordStage(nn.Module):
    """Coordinate conditioning (for the paper's coordinate-conditioned landscape model):
    a map of values in [0, 1], area-downsampled by `down_factor` and quantised to
    the integers 0..n_embed."""

    def __init__(self, n_embed: int, down_factor: int):
        super().__init__()
        self.n_embed = int(n_embed)
        self.down_factor = int(down_factor)

    def encode(self, c: torch.Tensor):
        if c.ndim != 4 or c.shape[1] != 1:
            raise ValueError(f"coordinate condition must be (B, 1, H, W), got {tuple(c.shape)}")
        if c.min() < 0.0 or c.max() > 1.0:
            raise ValueError("coordinate condition values must lie in [0, 1]")
        c = F.interpolate(c, scale_factor=1 / self.down_factor, mode="area").clamp(0.0, 1.0)
        quant = (self.n_embed * c).round()
        return quant, None, quant.long().reshape(c.shape[0], -1)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return F.interpolate(quant / self.n_embed, scale_factor=self.down_factor, mode="nearest")


class DummyCondStage(nn.Module):
    """Scene models (cond_stage_key objects_bbox or objects_center_points): the condition
    already is a token sequence, built from boxes and labels by a conditional builder
    (outside models/: tasks/data/objects/builders.py), and passes through unchanged."""

    def __init__(self, conditional_key: str):
        super().__init__()
        self.conditional_key = conditional_key

    def encode(self, c: torch.Tensor):
        c = torch.as_tensor(c)
        if c.dim() != 2 or c.is_floating_point():
            raise ValueError(f"a scene condition is integer tokens (B, n), got {c.dtype} {tuple(c.shape)}")
        c = c.long()
        return c, None, c


def conditioner_from_original_config(config, first_stage_model: nn.Module | None = None,
                                     sos_token: int = 0) -> nn.Module:
    """The condition stage an original `cond_stage_config` names, for the stages
    that carry no weights: "__is_unconditional__", "__is_first_stage__",
    taming.modules.util.{Labelator,SOSProvider}, taming.modules.misc.coord.CoordStage,
    taming.models.dummy_cond_stage.DummyCondStage.
    A VQGAN cond stage has weights and must be built by the checkpoint loader."""
    if config == "__is_unconditional__":
        return SOSProvider(sos_token)
    if config == "__is_first_stage__":
        if first_stage_model is None:
            raise ValueError("cond_stage_config '__is_first_stage__' needs the first stage model")
        return first_stage_model
    if not isinstance(config, dict) or "target" not in config:
        raise ValueError(f"cond_stage_config must be a mapping with a 'target', got {config!r}")
    target, params = config["target"], dict(config.get("params") or {})
    builders = {"Labelator": Labelator, "SOSProvider": SOSProvider, "CoordStage": CoordStage,
                "DummyCondStage": DummyCondStage}
    name = target.rsplit(".", 1)[-1]
    if name not in builders:
        raise ValueError(f"cond stage {target!r} has weights; build it with the checkpoint loader "
                         f"and pass it as cond_stage_model")
    params.pop("quantize_interface", None)  # the interface is always the quantizer-like one here
    return builders[name](**params)
