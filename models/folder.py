"""A trained model's folder, as the original publishes it and as our stages write it:

    <root>/checkpoints/last.ckpt + <root>/configs/<timestamp>-project.yaml

`ModelFolder.open(path)` finds the files (a folder, a checkpoint, or the s3:// URI of a
published folder) and reads the project YAML, so the pipeline knows what a folder
holds (checkpoint hash, image size, downsampling factor, token grid) without importing
any model code. Loading is models/first_stage.py (VQGANs) and models/pretrained.py (any model).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import yaml

from models import s3
from models.errors import ModelFileError
from models.files import sha256_file

NET2NET = "taming.models.cond_transformer.Net2NetTransformer"


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A trained model in the original's layout, read once: its checkpoint, the project
    YAML that describes it (the latest of configs/*-project.yaml; a resumed run keeps one
    per start) and what the pipeline needs to know about it without loading the weights."""
    checkpoint: Path
    config_path: Path
    config: dict               # the YAML's `model` section: {target, params}

    @classmethod
    def open(cls, path: str | Path, config: str | Path | None = None) -> "ModelFolder":
        """A folder, a checkpoint file (with `config`, else ../configs/*-project.yaml) or the
        s3:// URI of a published folder (downloaded and verified first)."""
        ckpt, config_path = locate(path, config)
        return cls(ckpt, config_path, read_config(config_path))

    @property
    def root(self) -> Path:
        return self.checkpoint.parent.parent

    @property
    def target(self) -> str:
        return self.config["target"]

    @property
    def is_transformer(self) -> bool:
        return self.target == NET2NET

    @functools.cached_property
    def sha256(self) -> str:
        """The checkpoint's SHA-256: what tokens and transformers record as their source."""
        return sha256_file(self.checkpoint)

    @property
    def vqgan_params(self) -> dict:
        """The (image) VQGAN's params: this model's, or a transformer's first stage's."""
        params = self.config.get("params") or {}
        return (params.get("first_stage_config") or {}).get("params") or {} if self.is_transformer else params

    @property
    def resolution(self) -> int:
        """The side in pixels the (image) VQGAN was trained at."""
        return int(self._ddconfig("resolution"))

    @property
    def downsampling(self) -> int:
        """Pixels per token along a side: 2 ** (number of resolution levels - 1)."""
        return 2 ** (len(self._ddconfig("ch_mult")) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid (h, w) of a training-size image."""
        side = self.resolution // self.downsampling
        return side, side

    @property
    def n_labels(self) -> int | None:
        """One-hot channels of a segmentation VQGAN; None for other models."""
        return self.vqgan_params.get("n_labels")

    def _ddconfig(self, key: str):
        try:
            return self.vqgan_params["ddconfig"][key]
        except (KeyError, TypeError):
            raise ModelFileError(f"{self.config_path}: no ddconfig.{key} for the "
                             f"{'first stage' if self.is_transformer else 'VQGAN'}") from None

    def stage_config(self) -> dict:
        """This VQGAN as a transformer's first_stage_config / cond_stage_config, as the
        original writes it: target and params, its checkpoint as ckpt_path, no loss."""
        params = {k: v for k, v in (self.config.get("params") or {}).items() if k != "lossconfig"}
        return {"target": self.target, "params": {"ckpt_path": str(self.checkpoint), **params,
                                                  "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}}



def locate(path: str | Path, config: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint, project YAML) on local disk, downloading s3:// URIs first."""
    if s3.is_s3(path):  # a folder published by `taming publish`: fetched, verified, cached
        path = s3.fetch_published(str(path))
    path = Path(path)
    if path.is_dir():
        ckpt, run_dir = path / "checkpoints" / "last.ckpt", path
    else:
        ckpt, run_dir = path, path.parent.parent  # <run>/checkpoints/<name>.ckpt
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    if config is None:
        found = sorted((run_dir / "configs").glob("*-project.yaml"))
        if not found:
            raise FileNotFoundError(f"no configs/*-project.yaml next to {ckpt} (looked in "
                                    f"{run_dir / 'configs'}); pass config=<project.yaml>")
        config = found[-1]  # a resumed run keeps one per start; timestamps sort, the last is current
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"config not found: {config}")
    return ckpt, config


def read_config(path: str | Path) -> dict:
    """The `model` section ({target, params}) of a project YAML."""
    with open(path) as f:
        cfg = yaml.safe_load(f)  # plain data only; YAML tags cannot construct objects
    model_cfg = cfg.get("model", cfg) if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict) or "target" not in model_cfg:
        raise ModelFileError(f"{path}: expected a `model:` section with `target` and `params`")
    return model_cfg
