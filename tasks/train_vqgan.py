"""Stage `train-vqgan --model image|depth|segmentation`: train one first-stage VQGAN.

Reads params section ``vqgan.<model>``; writes (the original project's layout)

    data/vqgan/<model>/checkpoints/last.ckpt
    data/vqgan/<model>/configs/<model>-project.yaml   # model.target taming.models.vqgan.VQModel
    data/vqgan/<model>/dvclive/                       # metrics.json, plots/metrics, plots/images/reconstructions

so ``models.load_pretrained("data/vqgan/<model>")`` loads it like an official
checkpoint. A killed run resumes from ``data/vqgan/<model>/resume/`` while its parameters
and inputs (the file lists, synsets.json, every image and map: ``inputs``) are unchanged
(tasks/training/trainer.py); a second run on the same model is refused while one runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from tasks.config.schema import VQGAN_KINDS, VQGANConfig
from tasks.config.typed import ConfigError
from tasks.data.layout import DATA, Layout


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


def dataset(layout: Layout, model: str, split: str, resolution: int, train: bool):
    """The ImageNet-style split with the maps a ``model`` VQGAN needs (random crops to train)."""
    from tasks.data.datasets import ImageNetDataset
    maps = {f"{model}_root": layout.maps(model)} if model != "image" else {}
    return ImageNetDataset(layout.images, split, size=resolution, random_crop=train,
                           synsets_json=layout.synsets_json, **maps)


def inputs(layout: Layout, model: str, datasets: dict) -> dict[str, str]:
    """What a run reads besides its parameters, identified for resuming (tasks/data/files.py's
    files_signature: every image's and map's size and mtime; the lists by content)."""
    from tasks.data.files import files_signature, sha256_file
    found = {"synsets.json": sha256_file(layout.synsets_json)}
    for split, data in datasets.items():
        found[f"{split} file list"] = sha256_file(layout.filelist(split))
        found[f"{split} images" + ("" if model == "image" else f" and {model} maps")] = files_signature(
            layout.sample_files(split, data.relpaths, None if model == "image" else model))
    return found


def run(cfg: VQGANConfig, layout: Layout = DATA) -> Path:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from tasks.training.batches import SeededBatches
    from tasks.training.lit_vqgan import LitVQGAN
    from tasks.training.trainer import exclusive, finish, make_trainer, resume_checkpoint

    out = layout.vqgan(cfg.model)
    desc = f"train-vqgan {cfg.model}"
    train_set = dataset(layout, cfg.model, "train", cfg.resolution, True)
    val_set = dataset(layout, cfg.model, "validation", cfg.resolution, False)
    with exclusive(out):
        resume = resume_checkpoint(out, cfg, inputs(layout, cfg.model, {"train": train_set, "validation": val_set}),
                                   desc)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        batches = SeededBatches(train_set, cfg.batch_size, cfg.seed)
        train = DataLoader(batches, batch_size=None, num_workers=cfg.num_workers)
        # a generator of its own: starting a validation pass draws from it, not from the training RNG
        val = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                         generator=torch.Generator())
        module = LitVQGAN(cfg.model, cfg.model_params(), cfg.loss_params(), cfg.learning_rate(),
                          accumulate_grad_batches=cfg.accumulate_grad_batches)
        trainer = make_trainer(out, cfg, desc=desc, resuming=resume is not None, batches=batches,
                               manual_optimization=True, optimizer_steps_per_update=module.optimizer_steps_per_update,
                               find_unused_parameters=True)
        trainer.fit(module, train, val, ckpt_path=resume)
        return finish(trainer, out, out / "configs" / f"{cfg.model}-project.yaml", project_yaml(cfg))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=VQGAN_KINDS, help="which first-stage model (params vqgan.<model>)")


def main(config, args: argparse.Namespace) -> None:
    if args.model not in config.vqgan:
        raise ConfigError(f"vqgan.{args.model}: no such first-stage model in params "
                          f"(configured: {', '.join(config.vqgan) or 'none'})")
    run(config.vqgan[args.model])
