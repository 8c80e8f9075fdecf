"""Stage `tokenize`: encode every image and its conditioning once with the frozen VQGANs.

Writes ``data/tokens/{train,validation}/part-NNNNN.parquet`` (tasks/data/token_store.py):
one row per (image, augmentation). Augmentation 0 is the centre crop the
validation split also uses; training adds its mirror image (``hflip``, aug 1)
and ``extra_crops`` seeded random crops (aug 2, 3, ...), each with the same
crop/flip applied to the conditioning map. With ``rescale``, training crops are cut
from images scaled to that shorter side (the original's COCO: 296 px for 256 px crops;
FacesHQ: crops of a larger face, whose coordinates say where they lie).

Conditioning ``coord`` (FacesHQ): each crop's coordinates in its rescaled image, area-
downsampled to the token grid and quantised to ``coord_n_embed`` levels (the original's
CoordStage); a mirrored crop keeps its coordinates.

Scenes (conditioning objects): the image is cropped as the original's dataset crops it
(centre; ``tokenize.objects.random_crop`` for the extra crops) and its boxes, the crop and
the flip become the condition tokens through the conditional builder (tasks/data/objects/),
objects in a seeded random order per row.

Images are cut into parts of ``rows_per_part`` images in file-list order; a part
is the unit of work: ``--shard I --num-shards N`` takes parts I, I+N, ... (so
machines or Prefect tasks can split the work), every part is written
atomically, and a rerun skips a part only if its metadata matches exactly: the
VQGAN checkpoints' hashes, the crop size, every setting that shapes the rows
(hflip, extra_crops, seed, rows_per_part, rescale, a scene's random_crop; token_store.RowSettings),
the builder and categories of a scene's condition tokens, and which images it holds with
which augmentations and a signature of their files, maps or object records
(token_store.PartInfo). Anything else is re-made; parts beyond the current count are
removed. The run that finds every part of a split current (the last shard to
finish) writes ``manifest.json`` with each part's rows and SHA-256, which training
verifies. A run holds the lock of its (split, shard) (tasks/runtime/locks.py).
"""
from __future__ import annotations

import argparse
import contextlib

from tasks.config.schema import SPLITS, ObjectsTokensConfig, TokenizeConfig
from tasks.config.typed import ConfigError
from tasks.data.layout import DATA, Layout
from tasks.runtime import locks
from tasks.runtime.devices import resolve_device
from tasks.runtime.progress import progress


class Augmented:
    """Rows (image i, augmentation a) of one part of a split, as tasks.data.datasets samples.
    ``condition(sample, flipped)``: the condition tokens of a sample (scenes: its boxes)."""

    def __init__(self, centre, random, images: range, augs: list[int], seed: int, condition=None):
        self.centre, self.random, self.augs, self.seed, self.condition = centre, random, augs, seed, condition
        self.rows = [(i, a) for i in images for a in augs]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> dict:
        import numpy as np
        import torch
        i, aug = self.rows[k]
        # crops and object orders depend only on (seed, image, aug): reproducible on any shard
        with torch.random.fork_rng():
            torch.manual_seed(int(np.random.SeedSequence([self.seed, i, aug]).generate_state(1)[0]))
            sample = self.centre[i] if aug < 2 else self.random[i]
            if aug == 1:   # coordinates stay: the mirror image lies where its crop lies
                for key in ("image", "depth", "segmentation"):
                    if key in sample:
                        sample[key] = torch.flip(sample[key], dims=[-1])
            if self.condition is not None:
                sample = self.condition(sample, flipped=aug == 1)
        return {**sample, "aug": aug}


class Encoder:
    """A frozen VQGAN folder: its model (eval, on the device), checkpoint hash and code grid."""

    def __init__(self, folder, kind: str, device):
        from models.first_stage import load_first_stage
        from models.folder import ModelFolder
        if not (folder / "checkpoints" / "last.ckpt").is_file():
            raise FileNotFoundError(f"{folder}/checkpoints/last.ckpt: not found; run `taming train-vqgan --model {kind}`")
        self.folder, self.kind, self.device = ModelFolder.open(folder), kind, device
        self.model = load_first_stage(self.folder.checkpoint, self.folder.config_path).to(device)

    @property
    def resolution(self) -> int:
        return self.folder.resolution

    def codes(self):
        from tasks.data.token_store import Codes
        return Codes(kind=self.kind, vocab_size=self.model.n_embed, grid=self.folder.grid, sha256=self.folder.sha256,
                     folder=str(self.folder.root))

    def encode(self, batch: dict):
        import torch

        from tasks.data.datasets import vqgan_input
        with torch.no_grad():
            x = vqgan_input(batch, self.kind, self.folder.n_labels).to(self.device)
            return self.model.encode(x)[2].cpu().numpy()


class Coordinates:
    """Coordinate tokens (the original's CoordStage): a crop's coordinate map, area-downsampled
    to the image's token grid and quantised to 0..n_embed-1."""

    def __init__(self, n_embed: int, image: Encoder):
        from models.conditioning import CoordStage
        from tasks.data.token_store import Codes
        self.stage = CoordStage(n_embed, image.folder.downsampling)
        self.codes = Codes(kind="coord", vocab_size=n_embed, grid=image.folder.grid)

    def encode(self, batch: dict):
        return self.stage.encode(batch["coord"].float())[2].numpy()


def scene_conditioning(cfg: ObjectsTokensConfig, layout: Layout):
    """The builder of tokenize.objects over the scene dataset's categories and object limit."""
    from tasks.data.objects.conditioning import SceneConditioning
    from tasks.data.objects.dataset import read_categories

    categories, info = read_categories(layout.objects)
    try:
        return SceneConditioning(builder=cfg.builder, no_max_objects=info["settings"]["max_objects_per_image"],
                                 no_tokens=cfg.no_tokens, encode_crop=cfg.encode_crop,
                                 use_group_parameter=cfg.use_group_parameter,
                                 use_additional_parameters=cfg.use_additional_parameters, categories=categories)
    except ValueError as e:
        raise ConfigError(f"tokenize.objects: {e} ({len(categories)} categories in {layout.objects})") from None


def run(cfg: TokenizeConfig, conditioning: str, splits=SPLITS, shard: int = 0, num_shards: int = 1,
        layout: Layout = DATA) -> dict:
    """Tokens of the images and of their ``conditioning`` (depth, segmentation, class, coord, none, objects)."""
    if not 0 <= shard < num_shards:
        raise ConfigError(f"--shard {shard}: must be in [0, --num-shards {num_shards})")
    # One run per (split, shard), refused before any work. Shards with overlapping parts (another
    # --num-shards) are safe: a part is written atomically and is a function of its metadata.
    with contextlib.ExitStack() as held:
        for split in splits:
            held.enter_context(locks.hold(layout.tokens, split, f"shard-{shard}-of-{num_shards}"))
        return _run(cfg, conditioning, splits, shard, num_shards, layout)


def _run(cfg: TokenizeConfig, conditioning: str, splits, shard: int, num_shards: int, layout: Layout) -> dict:
    import numpy as np
    from torch.utils.data import DataLoader

    from tasks.data.classes import ClassTable
    from tasks.data.datasets import ImageNetDataset
    from tasks.data.token_store import (
        MANIFEST,
        Codes,
        RowSettings,
        TokenMeta,
        is_current,
        list_parts,
        part_name,
        write_manifest,
        write_part,
    )

    device = resolve_device()
    image = Encoder(layout.vqgan(cfg.image_model), "image", device)
    if cfg.rescale is not None and cfg.rescale < image.resolution:
        raise ConfigError(f"tokenize.rescale: {cfg.rescale} px is less than the {image.resolution} px crops of "
                          f"{image.folder.root}")
    classes = ClassTable.read(layout.synsets_json)
    cond_encoder = None
    if conditioning in ("depth", "segmentation"):
        cond_encoder = Encoder(layout.vqgan(conditioning), conditioning, device)
        if cond_encoder.resolution != image.resolution:
            raise ConfigError(f"conditioning: the {conditioning} VQGAN is trained at {cond_encoder.resolution} px, "
                              f"the image VQGAN at {image.resolution} px; they must match")
        cond_codes = cond_encoder.codes()
    elif conditioning == "coord":
        cond_encoder = Coordinates(cfg.coord_n_embed, image)
        cond_codes = cond_encoder.codes
    elif conditioning == "class":
        cond_codes = Codes(kind="class", vocab_size=classes.n_classes, grid=(1, 1))
    elif conditioning == "objects":
        scene = scene_conditioning(cfg.objects, layout)
        builder = scene.make()
        cond_codes = Codes(kind=scene.builder, vocab_size=scene.no_tokens, grid=(1, builder.embedding_dim),
                           folder=str(layout.objects), builder=scene.to_json())
    else:
        cond_codes = Codes(kind="none", vocab_size=1, grid=(1, 1))
    meta = TokenMeta(image=image.codes(), cond=cond_codes, size=image.resolution,
                     rows=RowSettings(hflip=cfg.hflip, extra_crops=cfg.extra_crops, seed=cfg.seed,
                                      rows_per_part=cfg.rows_per_part, rescale=cfg.rescale,
                                      random_crop=cfg.objects.random_crop if conditioning == "objects" else None))

    counts = {}
    for split in splits:
        condition = None
        map_kind = conditioning if conditioning in ("depth", "segmentation") else None
        if conditioning == "objects":   # boxes through the builder, crops as the original's
            from tasks.data.objects.dataset import ObjectsDataset, ObjectsTokens

            common = dict(split=split, size=image.resolution, synsets_json=layout.synsets_json)
            centre = ObjectsDataset(layout.images, layout.objects, **common)
            random = ObjectsDataset(layout.images, layout.objects, crop_method=cfg.objects.random_crop, **common)
            condition = ObjectsTokens(builder)
        else:
            maps = {f"{conditioning}_root": layout.maps(conditioning)} if map_kind else {}
            common = dict(split=split, size=image.resolution, synsets_json=layout.synsets_json,
                          rescale=cfg.rescale if split == "train" else None, coord=conditioning == "coord", **maps)
            centre = ImageNetDataset(layout.images, **common)
            random = ImageNetDataset(layout.images, random_crop=True, **common)
        annotations = "objects" if conditioning == "objects" else map_kind
        parts = part_infos(centre, cfg, split, layout, annotations)
        split_dir = layout.tokens / split
        mine = parts[shard::num_shards]
        todo = [info for info in mine if not is_current(split_dir / part_name(info.index), meta, info)]
        if todo:  # the split is about to change: no manifest may vouch for it meanwhile
            (split_dir / MANIFEST).unlink(missing_ok=True)
        rows = 0
        for info in progress(todo, desc=f"tokenize {split}", unit="part", disable=len(todo) < 2):
            data = Augmented(centre, random, range(info.first, info.stop), list(info.augmentations), cfg.seed,
                             condition)
            loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
            columns = {"id": [], "class_label": [], "aug": [], "image_tokens": [], "cond_tokens": []}
            for batch in progress(loader, desc=f"{split} {part_name(info.index)}", unit="batch", leave=False):
                labels = batch["class_label"].numpy()
                columns["id"] += list(batch["relpath"])
                columns["class_label"].append(labels)
                columns["aug"].append(batch["aug"].numpy())
                columns["image_tokens"].append(image.encode(batch))
                if cond_encoder is not None:
                    columns["cond_tokens"].append(cond_encoder.encode(batch))
                elif condition is not None:
                    columns["cond_tokens"].append(batch["cond_tokens"].numpy())
                elif conditioning == "class":
                    columns["cond_tokens"].append(labels[:, None])
                else:
                    columns["cond_tokens"].append(np.zeros((len(labels), 1), np.int64))
            write_part(split_dir / part_name(info.index), meta, info, columns["id"],
                       *(np.concatenate(columns[c]) for c in ("class_label", "aug", "image_tokens", "cond_tokens")))
            rows += len(data)
        missing = [info.index for info in parts if not is_current(split_dir / part_name(info.index), meta, info)]
        if not missing:  # the last shard to finish seals the split
            for stale in list_parts(split_dir)[len(parts):]:   # an earlier, longer listing's parts
                stale.unlink()
            write_manifest(split_dir, [split_dir / part_name(info.index) for info in parts])
        counts[split] = {"images": len(centre), "parts": len(parts), "written": len(todo), "rows_written": rows,
                         "complete": not missing}
        print(f"tokenize {split}: {len(centre)} images x {len(cfg.augmentations(split))} augmentation(s) in "
              f"{len(parts)} part(s); wrote {len(todo)} part(s) ({rows} rows), {len(mine) - len(todo)} already done; "
              + ("manifest written" if not missing else
                 f"{len(missing)} part(s) still to make (other shards), so no manifest yet"))
    return counts


def part_infos(centre, cfg: TokenizeConfig, split: str, layout: Layout, annotations: str | None) -> list:
    """Every part of a split: which images, which augmentations, and a signature of their files
    (with ``annotations``, each image's map or object record too)."""
    from tasks.data.files import files_signature
    from tasks.data.token_store import PartInfo

    n = len(centre)
    return [PartInfo(split=split, index=k, first=first, stop=min(n, first + cfg.rows_per_part),
                     augmentations=tuple(cfg.augmentations(split)),
                     inputs=files_signature(layout.sample_files(split, centre.relpaths[first:first + cfg.rows_per_part],
                                                                annotations)))
            for k, first in enumerate(range(0, n, cfg.rows_per_part))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=SPLITS, action="append", help="split(s) to encode (default: all)")
    parser.add_argument("--shard", type=int, default=0, help="this worker's index (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of workers (default: %(default)s)")


def main(config, args: argparse.Namespace) -> None:
    run(config.tokenize, config.conditioning, splits=tuple(args.split or SPLITS), shard=args.shard,
        num_shards=args.num_shards)
