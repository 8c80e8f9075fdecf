"""VQGAN first stage: encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder.

Plain nn.Modules with the original's submodule names (encoder, decoder, quantize,
quant_conv, post_quant_conv), so official and our own checkpoints load strictly. The
training loss (models/losses.py) is not part of the model: the original kept it under
`loss.*`, which inference ignores.

    vq = VQModel(ddconfig, n_embed=1024, embed_dim=256)
    quant, emb_loss, indices = vq.encode(x)          # indices (B, h*w) int64
    xrec = vq.decode_indices(indices, (h, w))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.modules import Decoder, Encoder
from models.quantize import EMAVectorQuantizer, GumbelQuantize, VectorQuantizer


class VQModel(nn.Module):
    """The original VQModel's params (ddconfig, n_embed, embed_dim, remap,
    sane_index_shape, colorize_nlabels; lossconfig is accepted and ignored: the loss
    is built by training code), plus quantizer options the original fixed:

    quantizer  "vq" (straight-through nearest code) or "ema" (EMA codebook, dead-code restart)
    beta, legacy  VQ loss weighting (the original: 0.25, legacy=True)
    l2_norm    cosine lookup on l2-normalised codes ("vq" only); with a small embed_dim
               quant_conv/post_quant_conv are the factorised low-dimensional projection
    ema_decay, restart_threshold  for "ema"
    """

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, lossconfig: dict | None = None,
                 remap=None, sane_index_shape: bool = False, colorize_nlabels: int | None = None,
                 quantizer: str = "vq", beta: float = 0.25, legacy: bool = True, l2_norm: bool = False,
                 ema_decay: float = 0.99, restart_threshold: float = 0.1):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = self._make_quantizer(ddconfig, n_embed, embed_dim, remap=remap,
                                             sane_index_shape=sane_index_shape, quantizer=quantizer,
                                             beta=beta, legacy=legacy, l2_norm=l2_norm,
                                             ema_decay=ema_decay, restart_threshold=restart_threshold)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if colorize_nlabels is not None:  # random projection to show label maps as RGB
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))

    @staticmethod
    def _make_quantizer(ddconfig, n_embed, embed_dim, *, remap, sane_index_shape, quantizer, beta,
                        legacy, l2_norm, ema_decay, restart_threshold) -> nn.Module:
        if quantizer == "vq":
            return VectorQuantizer(n_embed, embed_dim, beta=beta, remap=remap, legacy=legacy,
                                   sane_index_shape=sane_index_shape, l2_norm=l2_norm)
        if quantizer == "ema":
            if l2_norm:
                raise ValueError("l2_norm is supported with quantizer='vq' only")
            return EMAVectorQuantizer(n_embed, embed_dim, beta=beta, decay=ema_decay,
                                      restart_threshold=restart_threshold, remap=remap,
                                      sane_index_shape=sane_index_shape)
        raise ValueError(f"quantizer must be 'vq' or 'ema', got {quantizer!r}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> quant (B, embed_dim, h, w), emb_loss (scalar), indices (B, h*w) int64."""
        h = self.quant_conv(self.encoder(x))
        quant, emb_loss, indices = self.quantize(h)
        return quant, emb_loss, indices.reshape(x.shape[0], -1).long()

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_indices(self, indices: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """indices (B, h*w) (or (B, h, w)) -> image (B, out_ch, H, W)."""
        b = indices.shape[0]
        quant = self.quantize.get_codebook_entry(indices.reshape(-1), (b, *hw, self.embed_dim))
        return self.decode(quant)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> reconstruction, emb_loss, indices (B, h*w)."""
        quant, emb_loss, indices = self.encode(x)
        return self.decode(quant), emb_loss, indices

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's last weight: where the loss balances reconstruction and GAN gradients."""
        return self.decoder.conv_out.weight

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """A label map's channels (B, n_labels, H, W) -> RGB in [-1, 1] via the fixed random projection."""
        x = F.conv2d(x, weight=self.colorize)
        return 2.0 * (x - x.min()) / (x.max() - x.min()) - 1.0


class GumbelVQ(VQModel):
    """VQGAN with the Gumbel-softmax quantizer (the original's GumbelVQ).
    temperature_scheduler_config (training-only annealing) is accepted and ignored."""

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, lossconfig: dict | None = None,
                 kl_weight: float = 1e-8, remap=None, sane_index_shape: bool = False,
                 colorize_nlabels: int | None = None, temperature_scheduler_config: dict | None = None,
                 straight_through: bool = True):
        super().__init__(ddconfig, n_embed, embed_dim, remap=remap, sane_index_shape=sane_index_shape,
                         colorize_nlabels=colorize_nlabels)
        # the original projects quant_conv's output (embed_dim channels) to code logits;
        # it named the input width z_channels, which equals embed_dim in every working config
        self.quantize = GumbelQuantize(embed_dim, embed_dim, n_embed=n_embed, kl_weight=kl_weight,
                                       straight_through=straight_through, remap=remap,
                                       sane_index_shape=sane_index_shape)


class VQSegmentationModel(VQModel):
    """VQGAN over one-hot label maps (B, n_labels, H, W), as the original's segmentation
    conditioning stage; `to_rgb` visualises its outputs."""

    def __init__(self, n_labels: int, **params):
        super().__init__(colorize_nlabels=n_labels, **params)
        self.n_labels = n_labels
