"""Stage `train-vqgan --model image|depth|segmentation`: one first stage, trained or imported.

Reads params section ``vqgan.<model>``; writes (the original project's layout)

    data/vqgan/<model>/checkpoints/last.ckpt
    data/vqgan/<model>/configs/<model>-project.yaml   # model.target taming.models.vqgan.VQModel
    data/dvclive/vqgan/<model>/                       # metrics.json, plots/metrics, plots/images/reconstructions

so ``models.load_pretrained("data/vqgan/<model>")`` loads it like an official
checkpoint. A killed run resumes from ``data/vqgan/<model>/resume/`` while its parameters
and inputs (the file lists, synsets.json, every image and map: ``inputs``) are unchanged
(tasks/training/trainer.py); a second run on the same model is refused while one runs.

``vqgan.<model>: {folder: ..., sha256: ...}`` names a model instead of training one: an
official taming log folder (``vqgan_imagenet_f16_16384``, ``2020-09-23T17-56-33_imagenet_vqgan``,
the Gumbel f8 model) or one published with `taming publish` (``s3://...``). The stage
checks it is a first stage of the right kind and, if given, that its checkpoint has that
SHA-256; reconstructs validation images with it (PSNR and a picture in DVCLive's folder, as a
trained one logs); and copies it into the same layout, with ``configs/source.json``
saying where it came from. Everything downstream then reads it like a trained one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from tasks.config.schema import IN_CHANNELS, VQGAN_KINDS, PretrainedVQGAN, VQGANConfig
from tasks.config.typed import ConfigError
from tasks.data.layout import DATA, Layout
from tasks.runtime.errors import StageError

IMPORT_CHECK_IMAGES = 8   # validation images an imported first stage reconstructs


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


def dataset(layout: Layout, model: str, split: str, resolution: int, train: bool, rescale: int | None = None):
    """The ImageNet-style split with the maps a ``model`` VQGAN needs (random crops to train,
    cut from images scaled to ``rescale``)."""
    from tasks.data.datasets import ImageNetDataset
    maps = {f"{model}_root": layout.maps(model)} if model != "image" else {}
    return ImageNetDataset(layout.images, split, size=resolution, random_crop=train, rescale=rescale,
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

    out, logs = layout.vqgan(cfg.model), layout.logs(f"vqgan/{cfg.model}")
    desc = f"train-vqgan {cfg.model}"
    train_set = dataset(layout, cfg.model, "train", cfg.resolution, True, cfg.rescale)
    val_set = dataset(layout, cfg.model, "validation", cfg.resolution, False)
    with exclusive(out):
        resume = resume_checkpoint(out, logs, cfg, inputs(layout, cfg.model, {"train": train_set, "validation": val_set}),
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
        return finish(trainer, out, logs, out / "configs" / f"{cfg.model}-project.yaml", project_yaml(cfg))


def import_folder(cfg: PretrainedVQGAN, layout: Layout = DATA) -> Path:
    """Verify the model folder ``cfg.folder`` and copy it into data/vqgan/<model>."""
    import shutil

    import torch
    from dvclive import Live
    from PIL import Image

    from models.first_stage import VQ_TARGETS, load_first_stage
    from models.folder import NET2NET, ModelFolder
    from tasks.data.datasets import vqgan_input
    from tasks.data.files import atomic_path, write_json, write_text
    from tasks.data.images import make_grid, to_rgb_arrays
    from tasks.evaluation.fidelity import psnr_ssim

    source = ModelFolder.open(cfg.folder)
    where = f"vqgan.{cfg.model}.folder {cfg.folder}"
    if source.target not in VQ_TARGETS:
        hint = " (a transformer: name its first stage's folder)" if source.target == NET2NET else ""
        raise StageError(f"{where}: {source.target} is not a first stage{hint}")
    channels = source.config["params"]["ddconfig"].get("in_channels")
    if cfg.model == "segmentation" and source.n_labels is None:
        raise StageError(f"{where}: not a segmentation VQGAN (no n_labels in {source.config_path})")
    if cfg.model != "segmentation" and channels != IN_CHANNELS[cfg.model]:
        raise StageError(f"{where}: its encoder takes {channels} channels, a {cfg.model} first stage "
                         f"{IN_CHANNELS[cfg.model]}")
    if cfg.sha256 and source.sha256 != cfg.sha256:
        raise StageError(f"{source.checkpoint}: SHA-256 {source.sha256} is not vqgan.{cfg.model}.sha256 {cfg.sha256}")

    out = layout.vqgan(cfg.model)
    model = load_first_stage(source.checkpoint, source.config_path, strict=True)
    data = dataset(layout, cfg.model, "validation", source.resolution, False)
    n = min(IMPORT_CHECK_IMAGES, len(data))
    batch = torch.utils.data.default_collate([data[i] for i in range(n)])
    x = vqgan_input(batch, cfg.model, source.n_labels)
    with torch.inference_mode():
        xrec, _, _ = model(x)
    shutil.rmtree(layout.logs(f"vqgan/{cfg.model}"), ignore_errors=True)
    with Live(str(layout.logs(f"vqgan/{cfg.model}")), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        if cfg.model == "segmentation":
            live.log_metric("val/pixel_accuracy", float((xrec.argmax(1) == x.argmax(1)).float().mean()))
        else:
            psnr, ssim = psnr_ssim(xrec, x)
            live.log_metric("val/psnr", float(psnr.mean()))
            live.log_metric("val/ssim", float(ssim.mean()))
        grid = make_grid([list(to_rgb_arrays(x, cfg.model)), list(to_rgb_arrays(xrec, cfg.model))])
        live.log_image("reconstructions/000000.png", Image.fromarray(grid))

    with atomic_path(out / "checkpoints" / "last.ckpt") as tmp:
        shutil.copyfile(source.checkpoint, tmp)
    write_text(out / "configs" / f"{cfg.model}-project.yaml", source.config_path.read_text())
    write_json(out / "configs" / "source.json", {"folder": cfg.folder, "checkpoint": str(source.checkpoint),
                                                 "config": str(source.config_path), "sha256": source.sha256,
                                                 "target": source.target, "resolution": source.resolution})
    print(f"train-vqgan {cfg.model}: imported {cfg.folder} ({source.target}, {source.resolution}px, "
          f"f{source.downsampling}, SHA-256 {source.sha256[:12]}...)")
    return out / "checkpoints" / "last.ckpt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=VQGAN_KINDS, help="which first-stage model (params vqgan.<model>)")


def main(config, args: argparse.Namespace) -> None:
    if args.model not in config.vqgan:
        raise ConfigError(f"vqgan.{args.model}: no such first-stage model in params "
                          f"(configured: {', '.join(config.vqgan) or 'none'})")
    cfg = config.vqgan[args.model]
    if isinstance(cfg, PretrainedVQGAN):
        import_folder(cfg)
    else:
        run(cfg)
