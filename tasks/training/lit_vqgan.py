"""LightningModule for a VQGAN first stage, trained as the original trains it.

Manual optimisation with two Adam optimisers (betas 0.5, 0.9): the autoencoder
(encoder, decoder, codebook, 1x1 convs) and the patch discriminator. The loss
module (models/losses.py) applies ``disc_start`` and the adaptive GAN weight.
A segmentation VQGAN (one-hot label maps, as the original's
VQSegmentationModel) has no discriminator: BCE on the logits + codebook loss.

The checkpoint's ``state_dict`` uses the original's key layout (``encoder.*``,
``decoder.*``, ``quantize.*``, ..., ``loss.*``), so ``models.load_pretrained``
reads our checkpoints like the official ones.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.losses import VQLPIPSWithDiscriminator
from models.quantize import CodebookUsage
from models.vqgan import VQModel, VQSegmentationModel
from tasks.data.datasets import vqgan_input
from tasks.data.images import make_grid, to_rgb_arrays

PREFIX = "model."  # our attribute name; the original's VQModel had no prefix
GRID_TILE = 128  # px per image in the reconstruction grids


class BCELossWithQuant(nn.Module):
    """The original's segmentation loss: BCE on one-hot targets + codebook loss."""

    def __init__(self, codebook_weight: float = 1.0):
        super().__init__()
        self.codebook_weight = codebook_weight

    def forward(self, codebook_loss, inputs, reconstructions, split="train"):
        bce = F.binary_cross_entropy_with_logits(reconstructions, inputs)
        loss = bce + self.codebook_weight * codebook_loss
        return loss, {f"{split}/total_loss": loss.detach(), f"{split}/bce_loss": bce.detach(),
                      f"{split}/quant_loss": codebook_loss.detach()}


class LitVQGAN(L.LightningModule):
    def __init__(self, kind: str, model_params: dict, loss_params: dict, learning_rate: float,
                 accumulate_grad_batches: int = 1, grid_images: int = 8):
        super().__init__()
        self.save_hyperparameters()  # primitives only: the checkpoint loads with weights_only=True
        self.automatic_optimization = False
        self.kind = kind
        self.learning_rate = learning_rate
        self.accumulate = accumulate_grad_batches
        if kind == "segmentation":
            self.model = VQSegmentationModel(**model_params)
            self.loss = BCELossWithQuant(**loss_params)
        else:
            self.model = VQModel(**model_params)
            self.loss = VQLPIPSWithDiscriminator(**loss_params)
        self.n_classes = model_params.get("n_labels")
        self.usage = CodebookUsage(self.model.n_embed)

    @property
    def has_discriminator(self) -> bool:
        return self.kind != "segmentation"

    @property
    def optimizer_steps_per_update(self) -> int:
        return 2 if self.has_discriminator else 1

    @property
    def update_step(self) -> int:
        """Parameter updates so far (Lightning's global_step counts every optimizer.step())."""
        return self.global_step // self.optimizer_steps_per_update

    def configure_optimizers(self):
        betas = (0.5, 0.9)
        opt_ae = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, betas=betas)
        if not self.has_discriminator:
            return opt_ae
        opt_disc = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.learning_rate, betas=betas)
        return [opt_ae, opt_disc]

    def _optimize(self, optimizer, loss: torch.Tensor, update: bool) -> None:
        self.manual_backward(loss / self.accumulate)
        if update:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def training_step(self, batch, batch_idx):
        x = vqgan_input(batch, self.kind, self.n_classes)
        update = (batch_idx + 1) % self.accumulate == 0
        step = self.update_step
        optimizers = self.optimizers()
        opt_ae = optimizers[0] if self.has_discriminator else optimizers
        # toggled: the graph built inside reaches only this optimiser's parameters, so the
        # generator's GAN term never leaves gradients in the discriminator
        with self.toggled_optimizer(opt_ae):
            xrec, qloss, indices = self.model(x)
            if self.has_discriminator:
                aeloss, log = self.loss(qloss, x, xrec, 0, step, last_layer=self.model.get_last_layer(),
                                        split="train")
            else:
                aeloss, log = self.loss(qloss, x, xrec, split="train")
            self._optimize(opt_ae, aeloss, update)
        if self.has_discriminator:
            opt_disc = optimizers[1]
            with self.toggled_optimizer(opt_disc):
                discloss, log_disc = self.loss(qloss.detach(), x, xrec.detach(), 1, step, split="train")
                self._optimize(opt_disc, discloss, update)
            log.update(log_disc)
        usage = CodebookUsage(self.model.n_embed)
        usage.update(indices)
        log["train/perplexity"] = usage.compute()["perplexity"]
        self.log_dict(log, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("rec", log.get("train/rec_loss", log["train/total_loss"]), prog_bar=True, logger=False,
                 batch_size=x.shape[0])
        losses = {"loss": aeloss.detach()}     # for tasks/training/trainer.py's FiniteGuard
        if self.has_discriminator:
            losses["discriminator loss"] = discloss.detach()
        return losses

    def on_validation_epoch_start(self):
        self.usage = CodebookUsage(self.model.n_embed)

    def validation_step(self, batch, batch_idx):
        x = vqgan_input(batch, self.kind, self.n_classes)
        xrec, qloss, indices = self.model(x)
        self.usage.update(indices)
        if self.has_discriminator:
            _, log = self.loss(qloss, x, xrec, 0, self.update_step, split="val")
        else:
            _, log = self.loss(qloss, x, xrec, split="val")
        self.log_dict({k: v for k, v in log.items() if "disc_factor" not in k}, sync_dist=True, batch_size=x.shape[0])
        if batch_idx == 0:
            self._log_reconstructions(x, xrec)

    def on_validation_epoch_end(self):
        counts = self.usage.counts.to(self.device)
        if self.trainer.world_size > 1:  # codes used anywhere in the validation split
            counts = self.all_gather(counts).sum(0)
        self.usage.counts = counts.cpu()
        stats = self.usage.compute()
        self.log_dict({"val/codebook_usage": stats["codebook_usage"], "val/perplexity": stats["perplexity"]})

    def _log_reconstructions(self, x: torch.Tensor, xrec: torch.Tensor) -> None:
        """Inputs above, reconstructions below, labelled and scaled up (nearest) to at least
        GRID_TILE px so that a 32 px image can be judged: one grid PNG per validation."""
        if not self.trainer.is_global_zero or self.logger is None:
            return
        n = min(self.hparams.grid_images, x.shape[0])
        grid = make_grid([list(to_rgb_arrays(x[:n], self.kind)), list(to_rgb_arrays(xrec[:n], self.kind))],
                         tile=max(GRID_TILE, x.shape[-1]), gap=4, row_labels=["input", "reconstruction"],
                         title=f"{self.kind} VQGAN, step {self.update_step}")
        self.logger.experiment.log_image(f"reconstructions/{self.update_step:06d}.png", Image.fromarray(grid))

    # ---- checkpoint layout: the original's keys ----------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the original's global_step counts batches; Lightning restores its own from "loops"
        checkpoint["global_step"] = self.update_step
        checkpoint["state_dict"] = {k.removeprefix(PREFIX): v for k, v in checkpoint["state_dict"].items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {(k if k.startswith("loss.") else PREFIX + k): v
                                    for k, v in checkpoint["state_dict"].items()}
