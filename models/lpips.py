"""LPIPS perceptual distance (Zhang et al. 2018, v0.1, VGG16), as taming uses it:
unit-normalised VGG16 features at 5 depths, squared differences, learned 1x1 linear
heads, spatial mean, summed over depths.

Weights: torchvision's VGG16 ImageNet file and LPIPS' linear heads (vgg.pth), both
found through models.weights.resolve. `pretrained=False` builds the same network with
random weights (tests, or when the caller loads a state dict itself).
"""
from __future__ import annotations

import torch
from torch import nn

# Where torchvision's vgg16().features is cut: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = (64, 128, 256, 512, 512)


class ScalingLayer(nn.Module):
    """Maps [-1, 1] images to the statistics the LPIPS heads were trained with."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Per-channel non-negative weighting of squared feature differences. The Dropout is
    the published file's layout (`model.1.weight`); LPIPS is always run in eval mode."""

    def __init__(self, chn_in: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, 1, bias=False))


class VGG16Features(nn.Module):
    """torchvision's VGG16 `features` (conv part only: the 120M-parameter classifier is
    never built), cut into the 5 slices LPIPS compares; names as taming's `net.sliceN.*`."""

    def __init__(self, state_dict: dict | None = None):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"])
        if state_dict is not None:  # torchvision's file: features.N.* (+ classifier.*, unused)
            features.load_state_dict({k.removeprefix("features."): v for k, v in state_dict.items()
                                      if k.startswith("features.")})
        for i, (a, b) in enumerate(VGG_SLICES, start=1):
            setattr(self, f"slice{i}", features[a:b])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i in range(1, len(VGG_SLICES) + 1):
            x = getattr(self, f"slice{i}")(x)
            feats.append(x)
        return feats


def _normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS(x, y) for images in [-1, 1] -> (B, 1, 1, 1) distances. Frozen: no parameter
    trains, but gradients flow to the inputs. pretrained=False: random weights."""

    def __init__(self, pretrained: bool = True, vgg_path=None, heads_path=None):
        super().__init__()
        vgg_state, heads_state = None, None
        if pretrained:
            from models.weights import resolve  # lazily: perceptual_weight 0 needs no weights

            # explicit paths win; else the resolver's cache / S3 mirror / official URL
            vgg_state = torch.load(resolve("vgg16", vgg_path), map_location="cpu", weights_only=True)
            heads_state = torch.load(resolve("lpips_vgg", heads_path), map_location="cpu", weights_only=True)
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features(vgg_state)
        # lin0..lin4: the names in vgg.pth and in taming's `loss.perceptual_loss.*` keys
        for i, c in enumerate(CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c))
        if heads_state is not None:
            self.load_state_dict(heads_state, strict=False)
            loaded = {k for k in heads_state if k.startswith("lin")}
            expected = {k for k in self.state_dict() if k.startswith("lin")}
            if loaded != expected:
                raise ValueError(f"LPIPS heads file has keys {sorted(heads_state)}, expected {sorted(expected)}")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # a fixed metric: keep dropout off even when the enclosing loss module trains
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = 0
        for i, (a, b) in enumerate(zip(fx, fy)):
            lin = getattr(self, f"lin{i}")
            total = total + lin.model((_normalize(a) - _normalize(b)) ** 2).mean([2, 3], keepdim=True)
        return total
