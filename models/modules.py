"""VQGAN encoder/decoder building blocks (taming/modules/diffusionmodules/model.py).

Module and parameter names match the original exactly, so official state dicts load
strictly. The original's timestep-embedding plumbing (always off in VQGAN) is left out, and
unlike the original, an unknown ddconfig key is an error rather than silently ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def Normalize(channels: int, groups: int = 32) -> nn.GroupNorm:
    # The original always uses 32 groups. Fewer (ddconfig norm_groups) matter for narrow models:
    # at 32 channels each group is one channel, which drops every feature map's per-image mean
    # (an image's overall colour, for a first level). The weights' shapes do not depend on it.
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.with_conv:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        # torch convs pad symmetrically; the original pads right/bottom only
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 conv_shortcut: bool = False, norm_groups: int = 32):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:  # the original's names: conv_shortcut (3x3) or nin_shortcut (1x1)
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if hasattr(self, "conv_shortcut") else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = Normalize(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, C, H, W) -> (B, 1 head, H*W tokens, C); SDPA's default scale is C**-0.5 as in the original
        q, k, v = (t(hn).reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) -> latent (B, z_channels [x2 if double_z], R/2^(L-1), R/2^(L-1))."""

    def __init__(self, *, ch: int, ch_mult=(1, 2, 4, 8), num_res_blocks: int, attn_resolutions,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 dropout: float = 0.0, resamp_with_conv: bool = True, out_ch: int | None = None,
                 norm_groups: int = 32):
        # out_ch is the decoder's: encoder and decoder share one ddconfig
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)

        in_ch_mult = (1, *ch_mult)
        curr_res = resolution
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(block_in, block_out, dropout, norm_groups=norm_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in, norm_groups))
            down = nn.Module()
            down.block, down.attn = block, attn
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups=norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups=norm_groups)

        self.norm_out = Normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, r, r) -> image (B, out_ch, r*2^(L-1), r*2^(L-1))."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult=(1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions, resolution: int, z_channels: int, dropout: float = 0.0,
                 resamp_with_conv: bool = True, give_pre_end: bool = False,
                 in_channels: int | None = None, double_z: bool | None = None, norm_groups: int = 32):
        # in_channels and double_z are the encoder's: both share one ddconfig
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.give_pre_end = give_pre_end

        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups=norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups=norm_groups)

        # built lowest resolution first, stored highest first (the original's indexing)
        ups = []
        for level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(block_in, block_out, dropout, norm_groups=norm_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in, norm_groups))
            up = nn.Module()
            up.block, up.attn = block, attn
            if level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)

        self.norm_out = Normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        if self.give_pre_end:
            return h
        return self.conv_out(F.silu(self.norm_out(h)))
