"""Stage `train-vqgan --model image|depth|segmentation`: train one first-stage VQGAN.

Reads params section ``vqgan.<model>``; writes (the original project's layout)

    data/vqgan/<model>/checkpoints/last.ckpt
    data/vqgan/<model>/configs/<model>-project.yaml   # model.target taming.models.vqgan.VQModel
    data/vqgan/<model>/dvclive/                       # metrics.json, plots/metrics, plots/images/reconstructions

so ``models.load_pretrained("data/vqgan/<model>")`` loads it like an official
checkpoint. A killed run resumes from ``data/vqgan/<model>/resume/``.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from tasks.config import build, check, load_params

MODELS = ("image", "depth", "segmentation")
IN_CHANNELS = {"image": 3, "depth": 1}
ROOT = Path("data/vqgan")
IMAGES = Path("data/imagenet")
MAPS = {"depth": Path("data/depth"), "segmentation": Path("data/segmentation")}


@dataclass
class DDConfig:
    """The original Encoder/Decoder config. in_channels, out_ch and resolution follow
    from the model kind and crop size; give them only to double-check."""
    z_channels: int = 64
    ch: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    double_z: bool = False
    in_channels: int | None = None
    out_ch: int | None = None
    resolution: int | None = None


@dataclass
class QuantizerConfig:
    """models.vqgan.VQModel quantizer options; the defaults are the original's."""
    quantizer: Literal["vq", "ema"] = "vq"
    beta: float = 0.25
    legacy: bool = True
    l2_norm: bool = False
    ema_decay: float = 0.99
    restart_threshold: float = 0.1


@dataclass
class LossConfig:
    """VQLPIPSWithDiscriminator options (original names); segmentation uses codebook_weight only."""
    disc_start: int = 1000
    disc_weight: float = 0.8
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0
    disc_num_layers: int = 2
    disc_factor: float = 1.0
    disc_ndf: int = 64
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    use_actnorm: bool = False


@dataclass
class VQGANConfig:
    model: Literal["image", "depth", "segmentation"]
    n_embed: int = 256
    embed_dim: int = 64
    size: int = 32
    ddconfig: DDConfig = field(default_factory=DDConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    n_classes: int = 182            # segmentation: one-hot channels (COCO-Stuff labels)
    base_learning_rate: float = 4.5e-6
    batch_size: int = 16
    accumulate_grad_batches: int = 1
    max_steps: int = 1000
    val_every: int = 250
    ckpt_every: int = 100
    devices: int = 1
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        key = f"vqgan.{self.model}"
        for name in ("n_embed", "embed_dim", "size", "batch_size", "accumulate_grad_batches", "max_steps",
                     "val_every", "ckpt_every", "devices"):
            check(getattr(self, name) > 0, f"{key}.{name}", "must be positive")
        check(self.n_embed <= 65536, f"{key}.n_embed", "must be <= 65536 (tokens are stored as uint16)")
        check(self.base_learning_rate > 0, f"{key}.base_learning_rate", "must be positive")
        check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")
        check(self.loss.disc_start >= 0, f"{key}.loss.disc_start", "must be >= 0")
        check(self.ddconfig.ch % 32 == 0, f"{key}.ddconfig.ch", "must be a multiple of 32 (GroupNorm with 32 groups)")
        factor = 2 ** (len(self.ddconfig.ch_mult) - 1)
        check(self.size % factor == 0, f"{key}.size", f"must be divisible by the downsampling factor {factor}")
        for name, want in (("in_channels", self.channels), ("out_ch", self.channels), ("resolution", self.size)):
            got = getattr(self.ddconfig, name)
            check(got in (None, want), f"{key}.ddconfig.{name}", f"is {got} but the {self.model} model needs {want}")

    @property
    def channels(self) -> int:
        return self.n_classes if self.model == "segmentation" else IN_CHANNELS[self.model]

    @property
    def out_dir(self) -> Path:
        return ROOT / self.model

    @property
    def grid(self) -> tuple[int, int]:
        side = self.size // 2 ** (len(self.ddconfig.ch_mult) - 1)
        return side, side

    def learning_rate(self) -> float:
        from tasks.training import learning_rate
        return learning_rate(self.base_learning_rate, self.batch_size, self.devices, self.accumulate_grad_batches)

    def ddconfig_dict(self) -> dict:
        return {**dataclasses.asdict(self.ddconfig), "in_channels": self.channels, "out_ch": self.channels,
                "resolution": self.size}

    def model_params(self) -> dict:
        """VQModel / VQSegmentationModel keyword arguments."""
        params = {"ddconfig": self.ddconfig_dict(), "n_embed": self.n_embed, "embed_dim": self.embed_dim}
        defaults = QuantizerConfig()
        params.update({k: v for k, v in dataclasses.asdict(self.quantizer).items() if getattr(defaults, k) != v})
        if self.model == "segmentation":
            params["n_labels"] = self.n_classes
        return params

    def loss_params(self) -> dict:
        if self.model == "segmentation":
            return {"codebook_weight": self.loss.codebook_weight}
        return {**dataclasses.asdict(self.loss), "disc_in_channels": self.channels}


def config_for(params: dict, model: str, where: str = "vqgan") -> VQGANConfig:
    """Build the config of ``vqgan.<model>`` from a loaded params dict."""
    section = (params.get("vqgan") or {})
    if model not in section:
        configured = ", ".join(section) or "none"
        from tasks.config import ConfigError
        raise ConfigError(f"{where}.{model}: no such first-stage model in params (configured: {configured})")
    return build(VQGANConfig, {**section[model], "model": model}, f"{where}.{model}")


def project_yaml(cfg: VQGANConfig) -> str:
    """The original project's config, so models.load_pretrained reads our folder."""
    if cfg.model == "segmentation":
        target, loss = "taming.models.vqgan.VQSegmentationModel", {
            "target": "taming.modules.losses.segmentation.BCELossWithQuant", "params": cfg.loss_params()}
    else:
        target, loss = "taming.models.vqgan.VQModel", {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": cfg.loss_params()}
    params = {**cfg.model_params(), "lossconfig": loss}
    if cfg.model != "image":
        params["image_key"] = cfg.model
    doc = {"model": {"base_learning_rate": cfg.base_learning_rate, "target": target, "params": params}}
    return yaml.safe_dump(doc, sort_keys=False)


def dataset(model: str, split: str, size: int, train: bool):
    """The ImageNet-style split with the maps a ``model`` VQGAN needs (random crops to train)."""
    from tasks.datasets import ImageNetDataset
    maps = {f"{model}_root": MAPS[model]} if model in MAPS else {}
    return ImageNetDataset(IMAGES, split, size=size, random_crop=train, **maps)


def run(cfg: VQGANConfig) -> Path:
    import lightning as L
    from torch.utils.data import DataLoader

    from tasks.lit_vqgan import LitVQGAN
    from tasks.training import finish, make_trainer, resume_checkpoint

    out = cfg.out_dir
    resume = resume_checkpoint(out, cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set, val_set = dataset(cfg.model, "train", cfg.size, True), dataset(cfg.model, "validation", cfg.size, False)
    train = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) >= cfg.batch_size,
                       num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    val = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    module = LitVQGAN(cfg.model, cfg.model_params(), cfg.loss_params(), cfg.learning_rate(),
                      accumulate_grad_batches=cfg.accumulate_grad_batches)
    trainer = make_trainer(out, max_steps=cfg.max_steps, devices=cfg.devices, val_every=cfg.val_every,
                           ckpt_every=cfg.ckpt_every, resuming=resume is not None,
                           accumulate_grad_batches=cfg.accumulate_grad_batches, manual_optimization=True,
                           optimizer_steps_per_update=module.optimizer_steps_per_update, find_unused_parameters=True)
    trainer.fit(module, train, val, ckpt_path=resume)
    return finish(trainer, out, out / "configs" / f"{cfg.model}-project.yaml", project_yaml(cfg))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=MODELS, help="which first-stage model (params vqgan.<model>)")


def main(args: argparse.Namespace) -> int:
    cfg = config_for(load_params(args.params, args.overrides), args.model)
    run(cfg)
    return 0
