"""Transformer training fed from Parquet tokens vs encoding images with the VQGANs every step.

The original taming code trains the transformer on images: each step decodes the
JPEGs and depth maps, runs both VQGAN encoders, then the GPT. The pipeline
encodes once (`taming tokenize`) and trains from Parquet. This script times both
with the same GPT, VQGANs and batch size (taken from params.yaml, the demo
profile by default), on a freshly rendered scene dataset, and prints steps/s,
the ratio, and the share of a Parquet-fed step spent in the loader. It also counts
the FLOPs of a GPT training step and of the two encoders: with both compute-bound,
1 + encoders / GPT is what skipping the encoders can buy at these sizes.

    .venv/bin/python bench/tokens.py [--params params.yaml] [-S key=value ...] [--steps 30] [--threads 1]
    .venv/bin/python bench/tokens.py --params profiles/drin-paper.yaml --flops-only
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.vqgan import VQModel  # noqa: E402
from tasks.config.params import validate  # noqa: E402
from tasks.data.datasets import ImageNetDataset  # noqa: E402
from tasks.data.scenes import write_extracted_dataset  # noqa: E402
from tasks.data.token_store import (  # noqa: E402
    Codes,
    PartInfo,
    RowSettings,
    TokenDataset,
    TokenMeta,
    part_name,
    token_loader,
    write_manifest,
    write_part,
)
from tasks.train_transformer import Vocabulary, gpt_params  # noqa: E402
from tasks.training.lit_transformer import LitTransformer  # noqa: E402


def timed_steps(batches, step, n: int, warmup: int = 3) -> tuple[float, float]:
    """(steps per CPU-second, fraction of it spent getting batches) over n steps after warmup.

    CPU time of this process, not wall time: on a shared machine it does not count the
    time other processes hold the cores (with --threads 1 it equals wall time on an idle core)."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    fetch = total = 0.0
    for _ in range(n):
        t0 = time.process_time()
        batch = next(it)
        t1 = time.process_time()
        step(batch)
        t2 = time.process_time()
        fetch, total = fetch + (t1 - t0), total + (t2 - t0)
    return n / total, fetch / total


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a parameter, e.g. -S vqgan.image.resolution=64 (repeatable)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=20, help="scene images per class (10 classes)")
    ap.add_argument("--flops-only", action="store_true",
                    help="count FLOPs at batch 1 and time nothing (paper-size profiles on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = validate(args.params, args.overrides)
    image_cfg, depth_cfg, tcfg = config.vqgan["image"], config.vqgan["depth"], config.transformer
    image_vq = VQModel(**image_cfg.model_params()).eval()
    depth_vq = VQModel(**depth_cfg.model_params()).eval()
    batch_size = 1 if args.flops_only else tcfg.batch_size
    if args.flops_only:
        args.images = 1

    with tempfile.TemporaryDirectory() as tmp:
        root = write_extracted_dataset(Path(tmp), n_train=args.images, n_val=1, classes=10,
                                       resolution=image_cfg.resolution)
        data = root / "data"
        images = ImageNetDataset(data / "dataset" / "image", "train", size=image_cfg.resolution, random_crop=True,
                                 depth_root=data / "dataset" / "depth", synsets_json=data / "raw/synsets.json")
        image_loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=True, drop_last=True)

        # tokenize once (what `taming tokenize` does), then train from the Parquet part
        meta = TokenMeta(image=Codes("image", image_cfg.n_embed, image_cfg.grid, "0" * 64),
                         cond=Codes("depth", depth_cfg.n_embed, depth_cfg.grid, "0" * 64), size=image_cfg.resolution,
                         rows=RowSettings(hflip=False, extra_crops=0, seed=0, rows_per_part=len(images)))
        rows = {"ids": [], "labels": [], "image": [], "cond": []}
        with torch.no_grad():
            for b in torch.utils.data.DataLoader(images, batch_size=64):
                rows["ids"] += b["relpath"]
                rows["labels"].append(b["class_label"].numpy())
                rows["image"].append(image_vq.encode(b["image"])[2].numpy())
                rows["cond"].append(depth_vq.encode(b["depth"])[2].numpy())
        part = root / "tokens" / part_name(0)
        info = PartInfo(split="train", index=0, first=0, stop=len(images), augmentations=(0,), inputs="")
        write_part(part, meta, info, rows["ids"], np.concatenate(rows["labels"]), np.zeros(len(rows["ids"])),
                   np.concatenate(rows["image"]), np.concatenate(rows["cond"]))
        write_manifest(part.parent, [part])
        t0 = time.perf_counter()
        tokens = TokenDataset(part.parent)
        load_s = time.perf_counter() - t0
        token_batches = token_loader(tokens, batch_size, shuffle=True, drop_last=True)

        vocab = Vocabulary.of(meta, tcfg.label_dropout)
        module = LitTransformer(gpt=gpt_params(tcfg, vocab), unconditional=False, pkeep=tcfg.pkeep,
                                cond_dropout=0.0, null_token=None, learning_rate=tcfg.learning_rate(),
                                weight_decay=tcfg.weight_decay, betas=tcfg.betas, warmup_steps=0,
                                max_steps=10 ** 9, min_lr_ratio=1.0, stage_checkpoints={})
        module.train()
        optimizer = module.configure_optimizers()["optimizer"]

        def train_step(batch):
            loss = module._loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def encode_then_train(batch):  # the original: VQGAN encoders inside every training step
            with torch.no_grad():
                z = image_vq.encode(batch["image"])[2]
                c = depth_vq.encode(batch["depth"])[2]
            train_step({"image_tokens": z, "cond_tokens": c})

        # what bounds the ratio: the arithmetic of a GPT training step vs the two encoders
        sample_batch = next(iter(image_loader))
        with FlopCounterMode(display=False) as gpt_flops:
            train_step(next(iter(token_batches)))
        with FlopCounterMode(display=False) as encoder_flops, torch.no_grad():
            image_vq.encode(sample_batch["image"])
            depth_vq.encode(sample_batch["depth"])

        if not args.flops_only:
            parquet_rate, parquet_share = timed_steps(forever(token_batches), train_step, args.steps)
            images_rate, images_share = timed_steps(forever(image_loader), encode_then_train, args.steps)

    n_params = sum(p.numel() for p in module.model.transformer.parameters())
    print(f"transformer {tcfg.n_layer}L/{tcfg.n_head}H/{tcfg.n_embd}d ({n_params / 1e6:.2f} M params), "
          f"batch {batch_size}, sequence {vocab.block_size - 1}, {image_cfg.resolution}px, {args.threads} thread(s)")
    gpt_g, enc_g = gpt_flops.get_total_flops() / 1e9, encoder_flops.get_total_flops() / 1e9
    flops = (f"  FLOPs per step       : GPT train {gpt_g:.2f} G, VQGAN encoders {enc_g:.2f} G -> "
             f"arithmetic bound on the ratio (1 + encoders / GPT) {1 + enc_g / gpt_g:.2f}x")
    if args.flops_only:
        print(flops)
        return
    print(f"  Parquet tokens       : {parquet_rate:7.2f} steps/CPU-s  (loader {100 * parquet_share:.1f}% of a step; "
          f"whole split loaded in {1e3 * load_s:.0f} ms)")
    print(f"  images + VQGAN encode: {images_rate:7.2f} steps/CPU-s  (image/depth loading {100 * images_share:.1f}% of a step)")
    print(f"  ratio                : {parquet_rate / images_rate:7.2f}x  (target >= 3x; loader share target < 20%)")
    print(flops)


if __name__ == "__main__":
    main()
