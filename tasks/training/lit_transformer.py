"""LightningModule for the Net2Net transformer, trained on Parquet tokens only.

The model sees token ids, never pixels: ``Net2NetTransformer.forward_indices``
with no first or condition stage built, so no VQGAN runs (or is even imported)
during training. AdamW with minGPT's decay split (biases, LayerNorm and
embeddings are not decayed: GPT.optim_groups), linear warmup then cosine decay.

The checkpoint's ``state_dict`` is laid out like the original's: ``transformer.*``
plus ``first_stage_model.*`` / ``cond_stage_model.*`` copied from the frozen
VQGAN checkpoints at save time, so the file is complete on its own and
``models.load_pretrained`` never needs the VQGAN folders.
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from models.gpt import GPT, GPTConfig
from models.net2net import Net2NetTransformer

PREFIX = "model."
STAGE_PREFIXES = ("first_stage_model.", "cond_stage_model.")


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine down to min_ratio at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LitTransformer(L.LightningModule):
    def __init__(self, gpt: dict, unconditional: bool, pkeep: float, cond_dropout: float,
                 null_token: int | None, learning_rate: float, weight_decay: float,
                 betas: tuple[float, float], warmup_steps: int, max_steps: int, min_lr_ratio: float,
                 stage_checkpoints: dict[str, str]):
        """stage_checkpoints: {"first_stage_model": path, "cond_stage_model": path} (VQGAN stages only)."""
        super().__init__()
        self.save_hyperparameters()  # primitives only: the checkpoint loads with weights_only=True
        self.model = Net2NetTransformer(GPT(GPTConfig(**gpt)), pkeep=pkeep, unconditional=unconditional,
                                        cond_dropout=cond_dropout, null_token=null_token)
        self._stage_state: dict | None = None

    def _loss(self, batch) -> torch.Tensor:
        cond = None if self.hparams.unconditional else batch["cond_tokens"]
        logits, target = self.model.forward_indices(batch["image_tokens"], cond)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image_tokens"].shape[0])
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=batch["image_tokens"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), sync_dist=True, batch_size=batch["image_tokens"].shape[0])

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.model.transformer.optim_groups(hp.weight_decay),
                                      lr=hp.learning_rate, betas=tuple(hp.betas))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- checkpoint layout: the original's keys, complete with the VQGAN stages ----

    def _stages(self) -> dict:
        if self._stage_state is None:
            from models.checkpoint import read_state_dict
            self._stage_state = {}
            for prefix, path in self.hparams.stage_checkpoints.items():
                state, _ = read_state_dict(path)
                self._stage_state.update({f"{prefix}.{k}": v for k, v in state.items() if not k.startswith("loss.")})
        return self._stage_state

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = {k.removeprefix(PREFIX): v for k, v in checkpoint["state_dict"].items()}
        checkpoint["state_dict"] = {**state, **self._stages()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {PREFIX + k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(STAGE_PREFIXES)}
