"""MiDaS v2.0 / v2.1 monocular depth (isl-org/MiDaS), as the original taming depth script ran it.

Two networks with the official ``state_dict`` layouts (``pretrained.*`` encoder,
``scratch.*`` RefineNet-style decoder):
  MidasNet        model-f46da743.pt (v2.0), midas_v21_384.pt (v2.1)  ResNeXt-101 32x8d (the WSL model's class)
  MidasNet_small  midas_v21_small_256.pt                             EfficientNet-Lite3 (timm's tf_efficientnet_lite3)

The original README warns that the published D-RIN models were trained on depth from
MiDaS v2.0, which torch.hub served when the data was prepared, and untested with v2.1.

The output is relative *inverse* depth (larger = nearer), non-negative.

``predict`` reproduces torch.hub's ``default_transform`` / ``small_transform``: the
image is scaled so its longer side is 384 (256), both sides rounded to a multiple of
32 without exceeding it ("upper_bound"), bicubic, ImageNet normalisation; the
prediction is resized back to the image size with bicubic interpolation.

gen-efficientnet's ``exportable=True`` encoder (what MiDaS-small was trained with)
pads its stride-2 "same" convolutions statically; timm pads dynamically. For inputs
that are multiples of 32 -- all the transform produces -- the two are identical.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResidualConvUnit(nn.Module):
    """relu-conv-relu-conv plus a skip. The large model's ReLU runs in place on its
    input, so its skip carries relu(x); the small model's skip carries x itself."""

    def __init__(self, features: int, skip_activated: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.skip_activated = skip_activated

    def forward(self, x):
        h = F.relu(x)
        return self.conv2(F.relu(self.conv1(h))) + (h if self.skip_activated else x)


class FeatureFusionBlock(nn.Module):
    """Add the refined skip feature, refine, upsample x2 (bilinear, corners aligned), project."""

    def __init__(self, features: int, skip_activated: bool, out_features: int | None = None):
        super().__init__()
        self.out_conv = nn.Conv2d(features, out_features, 1) if out_features else None
        self.resConfUnit1 = ResidualConvUnit(features, skip_activated)
        self.resConfUnit2 = ResidualConvUnit(features, skip_activated)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x) if self.out_conv is not None else x


class Interpolate(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)


class _Midas(nn.Module):
    """Encoder levels ``pretrained.layer1..4``; decoder ``scratch``: per-level 3x3 projections
    ``layerN_rn``, fusion ``refinenet4..1`` (coarse to fine), ``output_conv`` head."""

    def __init__(self, layers: list[nn.Module], in_channels: list[int], widths: list[int],
                 project: bool, skip_activated: bool):
        super().__init__()
        self.pretrained = nn.Module()
        for i, layer in enumerate(layers, 1):
            self.pretrained.add_module(f"layer{i}", layer)
        self.scratch = nn.Module()
        for i, (cin, w) in enumerate(zip(in_channels, widths), 1):
            self.scratch.add_module(f"layer{i}_rn", nn.Conv2d(cin, w, 3, padding=1, bias=False))
        for i in (4, 3, 2, 1):  # the original's registration order
            w = widths[i - 1]
            out = widths[max(i - 2, 0)] if project else None  # halve the width towards the finest level
            self.scratch.add_module(f"refinenet{i}", FeatureFusionBlock(w, skip_activated, out))
        f = widths[0]
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(f, f // 2, 3, padding=1), Interpolate(2), nn.Conv2d(f // 2, 32, 3, padding=1),
            nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU(),  # final ReLU: inverse depth is non-negative
        )

    def forward(self, x):
        """(B, 3, H, W) normalised, H and W multiples of 32 -> (B, H, W) inverse depth."""
        feats = []
        for i in range(1, 5):
            x = getattr(self.pretrained, f"layer{i}")(x)
            feats.append(getattr(self.scratch, f"layer{i}_rn")(x))
        path = self.scratch.refinenet4(feats[3])
        path = self.scratch.refinenet3(path, feats[2])
        path = self.scratch.refinenet2(path, feats[1])
        path = self.scratch.refinenet1(path, feats[0])
        return self.scratch.output_conv(path).squeeze(1)


class MidasNet(_Midas):
    """MiDaS v2.1 large (torch.hub "MiDaS", ``midas_v21_384.pt``)."""
    net_size = 384

    def __init__(self, features: int = 256):
        from torchvision.models import resnext101_32x8d

        r = resnext101_32x8d()
        layers = [nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1), r.layer2, r.layer3, r.layer4]
        super().__init__(layers, [256, 512, 1024, 2048], [features] * 4, project=False, skip_activated=True)


class MidasNet_small(_Midas):  # noqa: N801 -- the original's class name
    """MiDaS v2.1 small (torch.hub "MiDaS_small", ``midas_v21_small_256.pt``)."""
    net_size = 256

    def __init__(self, features: int = 64):
        import timm

        e = timm.create_model("tf_efficientnet_lite3", pretrained=False)
        # The original is Sequential(conv_stem, bn1, act1, ...); timm folds act1 into bn1,
        # so an Identity keeps the block indices (layer1.3, layer1.4) of the official keys.
        layers = [nn.Sequential(e.conv_stem, e.bn1, nn.Identity(), *e.blocks[0:2]),
                  nn.Sequential(*e.blocks[2:3]), nn.Sequential(*e.blocks[3:5]), nn.Sequential(*e.blocks[5:])]
        widths = [features, features * 2, features * 4, features * 8]
        super().__init__(layers, [32, 48, 136, 384], widths, project=True, skip_activated=False)


# v2.0 (model-f46da743.pt, what the published D-RIN models' depth came from) and v2.1 are
# the same MidasNet with different weights and the same input transform.
ARCHITECTURES = {"midas_v20": MidasNet, "midas_v21": MidasNet, "midas_v21_small": MidasNet_small}


def load_midas(name: str, weights: str | None = None) -> _Midas:
    """Build ``name`` and load its official weights (resolved by models.weights), eval mode."""
    from models.weights import load_state_dict

    model = ARCHITECTURES[name]()
    model.load_state_dict(load_state_dict(name, weights), strict=True)
    return model.eval()


def net_input_size(height: int, width: int, net_size: int) -> tuple[int, int]:
    """The official Resize(keep_aspect_ratio, ensure_multiple_of=32, "upper_bound")."""
    scale = min(net_size / height, net_size / width)

    def fit(x: float) -> int:
        y = round(x / 32) * 32  # numpy rounds halves to even, as Python's round does
        return int(x // 32 * 32) if y > net_size else y

    return fit(scale * height), fit(scale * width)


def preprocess(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) -> normalised float (3, *size), bicubic as the official cv2.INTER_CUBIC."""
    x = F.interpolate(image[None].float() / 255.0, size=size, mode="bicubic", align_corners=False)[0]
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict(model: _Midas, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 (3, H, W) images whose network input sizes agree -> float32 (H, W) inverse depth each."""
    sizes = [net_input_size(im.shape[1], im.shape[2], model.net_size) for im in images]
    assert len(set(sizes)) == 1, f"one batch needs one network input size, got {set(sizes)}"
    batch = torch.stack([preprocess(im, sizes[0]) for im in images])
    pred = model(batch)
    return [F.interpolate(p[None, None], size=im.shape[1:], mode="bicubic", align_corners=False)[0, 0]
            for p, im in zip(pred, images)]
