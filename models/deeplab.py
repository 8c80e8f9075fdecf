"""DeepLab v2 on COCO-Stuff 164k (kazuto1011/deeplab-pytorch), as taming's
scripts/extract_segmentation.py ran it.

``MSC(DeepLabV2(n_classes=182, n_blocks=[3, 4, 23, 3], atrous_rates=[6, 12, 18, 24]),
scales=[0.5, 0.75])`` with the official ``state_dict`` layout
(``base.layer1.conv1.conv.weight`` ... ``base.aspp.c3.bias``):
  - ResNet-101, Caffe style: a block's stride sits on its first 1x1 conv ("reduce");
    the last two stages keep the resolution and dilate by 2 and 4 (output stride 8);
  - ASPP: four 3x3 convs with dilation 6/12/18/24 straight to class logits, summed;
  - MSC: the image at scales 1, 0.5, 0.75, logits resized to the full-scale ones and
    fused by a pixel-wise max (eval mode).

``segment`` takes uint8 RGB images and does what the taming script did: BGR order,
Caffe mean subtraction on the 0..255 scale, logits upsampled to the image size
(bilinear, corners aligned, like ``upsample_bilinear``), argmax over the 182 labels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

N_CLASSES = 182  # COCO-Stuff 164k label ids 0..181
BGR_MEAN = (104.008, 116.669, 122.675)


class ConvBnReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int, dilation: int, relu: bool = True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.001))
        if relu:
            self.add_module("relu", nn.ReLU())


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, downsample: bool):
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBnReLU(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBnReLU(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = ConvBnReLU(cin, cout, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x):
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class ResLayer(nn.Sequential):
    def __init__(self, n: int, cin: int, cout: int, stride: int, dilation: int):
        super().__init__()
        for i in range(n):
            self.add_module(f"block{i + 1}", Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                        dilation, downsample=i == 0))


class Stem(nn.Sequential):
    def __init__(self, cout: int):
        super().__init__()
        self.add_module("conv1", ConvBnReLU(3, cout, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    def __init__(self, cin: int, n_classes: int, rates: tuple[int, ...]):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, n_classes, 3, padding=r, dilation=r))

    def forward(self, x):
        return sum(branch(x) for branch in self.children())


class DeepLabV2(nn.Sequential):
    def __init__(self, n_classes: int = N_CLASSES, n_blocks=(3, 4, 23, 3), rates=(6, 12, 18, 24)):
        super().__init__()
        ch = [64 * 2 ** p for p in range(6)]
        self.add_module("layer1", Stem(ch[0]))
        self.add_module("layer2", ResLayer(n_blocks[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", ResLayer(n_blocks[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", ResLayer(n_blocks[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", ResLayer(n_blocks[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", ASPP(ch[5], n_classes, rates))


class MSC(nn.Module):
    """Multi-scale inputs; eval mode returns the pixel-wise max of the logits over scales."""

    def __init__(self, base: nn.Module, scales=(0.5, 0.75)):
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x):
        logits = self.base(x)
        size = logits.shape[2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        if self.training:
            return [logits, *pyramid, torch.stack([logits, *resized]).max(0).values]
        return torch.stack([logits, *resized]).max(0).values


def deeplabv2_cocostuff() -> MSC:
    return MSC(DeepLabV2())


def load_deeplab(name: str = "deeplabv2_cocostuff", weights: str | None = None) -> MSC:
    """Build the model and load its official weights (resolved by models.weights), eval mode."""
    from models.weights import load_state_dict

    model = deeplabv2_cocostuff()
    model.load_state_dict(load_state_dict(name, weights), strict=True)
    return model.eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (B, 3, H, W) -> float BGR minus the Caffe mean, on the 0..255 scale."""
    mean = torch.tensor(BGR_MEAN, device=images.device).view(1, 3, 1, 1)
    return images.flip(1).float() - mean


@torch.no_grad()
def segment(model: MSC, images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (B, 3, H, W) -> uint8 (B, H, W) COCO-Stuff labels."""
    logits = model(preprocess(images))
    logits = F.interpolate(logits, size=images.shape[2:], mode="bilinear", align_corners=True)
    return logits.argmax(1).to(torch.uint8)
