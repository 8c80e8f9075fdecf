"""VQGAN training loss (taming/modules/losses/vqperceptual.py), same formulas:

generator (optimizer_idx 0):
    nll  = mean(|x - xrec| + perceptual_weight * LPIPS(x, xrec))
    g    = -mean(D(xrec))
    loss = nll + d_weight * disc_factor * g + codebook_weight * codebook_loss
  d_weight = ||grad nll|| / (||grad g|| + 1e-4) at the decoder's last layer, clamped to
  [0, 1e4], times disc_weight; disc_factor = 0 before `disc_start` steps.
discriminator (optimizer_idx 1):
    loss = disc_factor * hinge or vanilla loss of D(x), D(xrec)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.discriminator import NLayerDiscriminator


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


class VQLPIPSWithDiscriminator(nn.Module):
    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 lpips_pretrained: bool = True):
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {disc_loss!r}")
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight  # kept for config compatibility: the original never applies it
        self.perceptual_weight = perceptual_weight
        if perceptual_weight > 0:
            from models.lpips import LPIPS  # torchvision + weights only when used

            self.perceptual_loss = LPIPS(pretrained=lpips_pretrained)
        self.discriminator = NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers, use_actnorm)
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: torch.Tensor) -> torch.Tensor:
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def _discriminate(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if (cond is not None) != self.disc_conditional:
            raise ValueError(f"disc_conditional={self.disc_conditional} but cond is "
                             f"{'given' if cond is not None else 'None'}")
        return self.discriminator(x if cond is None else torch.cat((x, cond), dim=1))

    def forward(self, codebook_loss: torch.Tensor, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train"):
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)

        if optimizer_idx == 1:
            logits_real = self._discriminate(inputs.detach(), cond)
            logits_fake = self._discriminate(reconstructions.detach(), cond)
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
            return d_loss, {f"{split}/disc_loss": d_loss.detach(),
                            f"{split}/logits_real": logits_real.detach().mean(),
                            f"{split}/logits_fake": logits_fake.detach().mean()}
        if optimizer_idx != 0:
            raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), got {optimizer_idx}")

        rec_loss = torch.abs(inputs - reconstructions)
        p_loss = torch.zeros((), device=inputs.device)
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs, reconstructions)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        nll_loss = torch.mean(rec_loss)

        zero = torch.zeros((), device=inputs.device)
        if disc_factor > 0:
            g_loss = -torch.mean(self._discriminate(reconstructions, cond))
            # the adaptive weight needs the graph; without one (validation) the GAN term is off
            if torch.is_grad_enabled() and self.training:
                if last_layer is None:
                    raise ValueError("training needs last_layer=VQModel.get_last_layer() for the adaptive GAN weight")
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
            else:
                d_weight = zero
        else:
            # before disc_start the GAN term is multiplied by 0: skip D and the two extra backward passes
            g_loss, d_weight = zero, zero
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        return loss, {f"{split}/total_loss": loss.detach(),
                      f"{split}/quant_loss": codebook_loss.detach().mean(),
                      f"{split}/nll_loss": nll_loss.detach(),
                      f"{split}/rec_loss": rec_loss.detach().mean(),
                      f"{split}/p_loss": p_loss.detach().mean(),
                      f"{split}/d_weight": d_weight.detach(),
                      f"{split}/disc_factor": torch.tensor(float(disc_factor)),
                      f"{split}/g_loss": g_loss.detach()}
