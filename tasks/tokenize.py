"""Stage `tokenize`: encode every image and its conditioning once with the frozen VQGANs.

Writes ``data/tokens/{train,validation}/part-NNNNN.parquet`` (tasks/tokens.py):
one row per (image, augmentation). Augmentation 0 is the centre crop the
validation split also uses; training adds its mirror image (``hflip``, aug 1)
and ``extra_crops`` seeded random crops (aug 2, 3, ...), each with the same
crop/flip applied to the conditioning map.

Images are cut into parts of ``rows_per_part`` images in file-list order; a part
is the unit of work: ``--shard I --num-shards N`` takes parts I, I+N, ... (so
machines or Prefect tasks can split the work), every part is written
atomically, and a rerun skips the parts already written for the same VQGAN
weights and settings.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from tasks.config import ConfigError, check, from_params
from tasks.train_vqgan import IMAGES, MAPS, ROOT as VQGAN_ROOT

OUT = Path("data/tokens")
SPLITS = ("train", "validation")


@dataclass
class TokenizeConfig:
    image_model: str = "image"      # VQGAN folder data/vqgan/<image_model> for image tokens
    cond: Literal["depth", "segmentation", "class", "none"] = "depth"
    hflip: bool = True              # train: add the mirror image of each crop (aug 1)
    extra_crops: int = 0            # train: add this many seeded random crops (aug 2..)
    batch_size: int = 64
    rows_per_part: int = 4096       # images per Parquet part (all their augmentations go with them)
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        check(self.extra_crops >= 0, "tokenize.extra_crops", "must be >= 0")
        check(self.batch_size > 0, "tokenize.batch_size", "must be positive")
        check(self.rows_per_part > 0, "tokenize.rows_per_part", "must be positive")
        check(self.num_workers >= 0, "tokenize.num_workers", "must be >= 0")

    def augmentations(self, split: str) -> list[int]:
        if split != "train":
            return [0]
        return [0] + ([1] if self.hflip else []) + list(range(2, 2 + self.extra_crops))


class Augmented:
    """Rows (image i, augmentation a) of one part of a split, as tasks.datasets samples."""

    def __init__(self, centre, random, images: range, augs: list[int], seed: int):
        self.centre, self.random, self.augs, self.seed = centre, random, augs, seed
        self.rows = [(i, a) for i in images for a in augs]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict:
        import numpy as np
        import torch
        i, aug = self.rows[k]
        if aug < 2:
            sample = self.centre[i]
        else:  # the crop depends only on (seed, image, aug): reproducible on any shard
            with torch.random.fork_rng():
                torch.manual_seed(int(np.random.SeedSequence([self.seed, i, aug]).generate_state(1)[0]))
                sample = self.random[i]
        if aug == 1:
            for key in ("image", "depth", "segmentation"):
                if key in sample:
                    sample[key] = torch.flip(sample[key], dims=[-1])
        return {**sample, "aug": aug}


class Encoder:
    """A frozen VQGAN folder: its model (eval, on the device), checkpoint hash and code grid."""

    def __init__(self, name: str, device):
        from models.pretrained import load_pretrained
        from tasks.training import sha256_file
        self.name, self.folder = name, VQGAN_ROOT / name
        if not (self.folder / "checkpoints" / "last.ckpt").is_file():
            raise FileNotFoundError(f"{self.folder}/checkpoints/last.ckpt: not found; run `taming train-vqgan --model {name}`")
        self.sha256 = sha256_file(self.folder / "checkpoints" / "last.ckpt")
        self.model = load_pretrained(self.folder).to(device)
        self.device = device
        params = yaml.safe_load(next((self.folder / "configs").glob("*-project.yaml")).read_text())["model"]["params"]
        self.size = params["ddconfig"]["resolution"]
        side = self.size // 2 ** (len(params["ddconfig"]["ch_mult"]) - 1)
        self.grid = (side, side)
        self.n_labels = params.get("n_labels")

    def codes(self, kind: str):
        from tasks.tokens import Codes
        return Codes(kind=kind, vocab_size=self.model.n_embed, grid=self.grid, sha256=self.sha256, folder=str(self.folder))

    def encode(self, batch: dict, kind: str):
        import torch
        from tasks.lit_vqgan import model_input
        with torch.no_grad():
            x = model_input(batch, kind, self.n_labels).to(self.device)
            return self.model.encode(x)[2].cpu().numpy()


def class_ranks() -> dict[str, int]:
    """Class label = rank of the synset among the TRAIN split's synsets, on every split."""
    listing = IMAGES / "train" / "filelist.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: not found (run `taming extract` first)")
    synsets = sorted({line.split("/")[0] for line in listing.read_text().splitlines() if line})
    return {s: i for i, s in enumerate(synsets)}


def run(cfg: TokenizeConfig, splits=SPLITS, shard: int = 0, num_shards: int = 1, out: Path = OUT) -> dict:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from tasks.datasets import ImageNetDataset
    from tasks.tokens import Codes, TokenMeta, list_parts, part_name, read_meta, write_part

    if not 0 <= shard < num_shards:
        raise ConfigError(f"--shard {shard}: must be in [0, --num-shards {num_shards})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    image = Encoder(cfg.image_model, device)
    ranks = class_ranks()
    cond_vqgan = None
    if cfg.cond in MAPS:
        cond_vqgan = Encoder(cfg.cond, device)
        if cond_vqgan.size != image.size:
            raise ConfigError(f"tokenize.cond: the {cfg.cond} VQGAN is trained at {cond_vqgan.size} px, "
                              f"the image VQGAN at {image.size} px; they must match")
        cond_codes = cond_vqgan.codes(cfg.cond)
    elif cfg.cond == "class":
        cond_codes = Codes(kind="class", vocab_size=len(ranks), grid=(1, 1))
    else:
        cond_codes = Codes(kind="none", vocab_size=1, grid=(1, 1))
    meta = TokenMeta(image=image.codes("image"), cond=cond_codes, size=image.size)

    counts = {}
    for split in splits:
        maps = {f"{cfg.cond}_root": MAPS[cfg.cond]} if cfg.cond in MAPS else {}
        centre = ImageNetDataset(IMAGES, split, size=image.size, **maps)
        random = ImageNetDataset(IMAGES, split, size=image.size, random_crop=True, **maps)
        augs = cfg.augmentations(split)
        n_parts = math.ceil(len(centre) / cfg.rows_per_part)
        split_dir = out / split
        if num_shards == 1:  # a complete run owns the folder: drop parts of an earlier, larger listing
            for stale in list_parts(split_dir)[n_parts:]:
                stale.unlink()
        todo = [k for k in range(shard, n_parts, num_shards)
                if not ((split_dir / part_name(k)).is_file() and read_meta(split_dir / part_name(k)) == meta)]
        rows = 0
        for k in tqdm(todo, desc=f"tokenize {split}", unit="part", disable=len(todo) < 2):
            images = range(k * cfg.rows_per_part, min(len(centre), (k + 1) * cfg.rows_per_part))
            data = Augmented(centre, random, images, augs, cfg.seed)
            loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
            columns = {"id": [], "class_label": [], "aug": [], "image_tokens": [], "cond_tokens": []}
            for batch in tqdm(loader, desc=f"{split} {part_name(k)}", unit="batch", leave=False):
                labels = np.array([ranks[s] for s in batch["synset"]])
                columns["id"] += list(batch["relpath"])
                columns["class_label"].append(labels)
                columns["aug"].append(batch["aug"].numpy())
                columns["image_tokens"].append(image.encode(batch, "image"))
                if cond_vqgan is not None:
                    columns["cond_tokens"].append(cond_vqgan.encode(batch, cfg.cond))
                elif cfg.cond == "class":
                    columns["cond_tokens"].append(labels[:, None])
                else:
                    columns["cond_tokens"].append(np.zeros((len(labels), 1), np.int64))
            write_part(split_dir / part_name(k), meta, columns["id"],
                       *(np.concatenate(columns[c]) for c in ("class_label", "aug", "image_tokens", "cond_tokens")))
            rows += len(data)
        counts[split] = {"images": len(centre), "parts": n_parts, "written": len(todo), "rows_written": rows}
        print(f"tokenize {split}: {len(centre)} images x {len(augs)} augmentation(s) in {n_parts} part(s); "
              f"wrote {len(todo)} part(s) ({rows} rows), {len(range(shard, n_parts, num_shards)) - len(todo)} already done")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=SPLITS, action="append", help="split(s) to encode (default: all)")
    parser.add_argument("--shard", type=int, default=0, help="this worker's index (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of workers (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    cfg = from_params(TokenizeConfig, args.params, "tokenize", args.overrides)
    run(cfg, splits=tuple(args.split or SPLITS), shard=args.shard, num_shards=args.num_shards)
    return 0
