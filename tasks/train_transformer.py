"""Stage `train-transformer`: the conditional transformer, from Parquet tokens only.

Reads ``data/tokens/{train,validation}`` (written by `taming tokenize`) and params
section ``transformer``. It never runs a VQGAN: the VQGAN checkpoints are only
hashed (the tokens must come from exactly these weights) and their tensors copied
into the output checkpoint. Writes, in the original project's layout,

    data/transformer/checkpoints/last.ckpt
    data/transformer/configs/transformer-project.yaml   # taming.models.cond_transformer.Net2NetTransformer
    data/transformer/dvclive/                           # metrics.json, plots/metrics

so ``models.load_pretrained("data/transformer")`` loads it. A killed run resumes
from ``data/transformer/resume/``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tasks.config import check, from_params

if TYPE_CHECKING:  # pyarrow only when the stage runs: tasks/params.py builds this config for every stage
    from tasks.tokens import Codes, TokenMeta

TOKENS = Path("data/tokens")
OUT = Path("data/transformer")


class TokensMismatch(RuntimeError):
    """The token files do not belong to the VQGAN checkpoints on disk."""


@dataclass
class TransformerConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    pkeep: float = 1.0               # keep each input image token with this prob. (original's corruption)
    label_dropout: float = 0.0       # classifier-free guidance: drop the condition to the null token
    base_learning_rate: float = 4.5e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    batch_size: int = 32
    accumulate_grad_batches: int = 1
    max_steps: int = 2000
    val_every: int = 250
    ckpt_every: int = 100
    devices: int = 1
    seed: int = 0

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "batch_size", "accumulate_grad_batches", "max_steps",
                     "val_every", "ckpt_every", "devices"):
            check(getattr(self, name) > 0, f"transformer.{name}", "must be positive")
        check(self.n_embd % self.n_head == 0, "transformer.n_embd", f"must be divisible by n_head ({self.n_head})")
        check(0 < self.pkeep <= 1, "transformer.pkeep", "must be in (0, 1]")
        check(0 <= self.label_dropout < 1, "transformer.label_dropout", "must be in [0, 1)")
        check(self.base_learning_rate > 0, "transformer.base_learning_rate", "must be positive")
        check(self.warmup_steps >= 0, "transformer.warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "transformer.min_lr_ratio", "must be in [0, 1]")

    def learning_rate(self) -> float:
        from tasks.training import learning_rate
        return learning_rate(self.base_learning_rate, self.batch_size, self.devices, self.accumulate_grad_batches)


@dataclass(frozen=True)
class Vocabulary:
    """How image and condition tokens share the GPT's one embedding table (as the original)."""
    size: int
    block_size: int
    null_token: int | None    # the dropped-condition token for classifier-free guidance

    @classmethod
    def of(cls, meta: TokenMeta, label_dropout: float) -> "Vocabulary":
        null = meta.cond.vocab_size if label_dropout > 0 else None
        size = max(meta.image.vocab_size, meta.cond.vocab_size + (1 if null is not None else 0))
        return cls(size=size, block_size=meta.cond.length + meta.image.length, null_token=null)


def vqgan_checkpoint(codes: Codes) -> Path:
    return Path(codes.folder) / "checkpoints" / "last.ckpt"


def check_token_sources(meta: TokenMeta, where: Path) -> None:
    """The tokens must have been made by the VQGAN checkpoints that are on disk now."""
    from tasks.training import sha256_file
    for role, codes in (("image", meta.image), ("cond", meta.cond)):
        if codes.sha256 is None:
            continue
        ckpt = vqgan_checkpoint(codes)
        if not ckpt.is_file():
            raise TokensMismatch(f"{where}: {role} tokens come from {ckpt}, which does not exist")
        actual = sha256_file(ckpt)
        if actual != codes.sha256:
            raise TokensMismatch(
                f"{where}: {role} tokens were made by a VQGAN checkpoint with SHA-256 {codes.sha256[:12]}..., "
                f"but {ckpt} now has {actual[:12]}...; rerun `taming tokenize` (or `dvc repro`)")


def _stage_config(codes: Codes) -> dict:
    """A VQGAN folder's project YAML as the original's first/cond_stage_config."""
    folder = Path(codes.folder)
    found = sorted((folder / "configs").glob("*-project.yaml"))
    if not found:
        raise FileNotFoundError(f"{folder / 'configs'}: no *-project.yaml for the {codes.kind} VQGAN")
    model = yaml.safe_load(found[-1].read_text())["model"]
    params = {k: v for k, v in model["params"].items() if k != "lossconfig"}
    params = {"ckpt_path": str(vqgan_checkpoint(codes)), **params,
              "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}
    return {"target": model["target"], "params": params}


def project_yaml(cfg: TransformerConfig, meta: TokenMeta, vocab: Vocabulary) -> str:
    cond = meta.cond
    if cond.kind == "none":
        cond_key, cond_config = meta.image.kind, "__is_unconditional__"
    elif cond.kind == "class":
        cond_key, cond_config = "class_label", {"target": "taming.modules.util.Labelator",
                                                "params": {"n_classes": cond.vocab_size}}
    else:
        cond_key, cond_config = cond.kind, _stage_config(cond)
    params = {
        "cond_stage_key": cond_key,
        "pkeep": cfg.pkeep,
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": gpt_params(cfg, vocab)},
        "first_stage_config": _stage_config(meta.image),
        "cond_stage_config": cond_config,
    }
    doc = {"model": {"base_learning_rate": cfg.base_learning_rate,
                     "target": "taming.models.cond_transformer.Net2NetTransformer", "params": params}}
    return yaml.safe_dump(doc, sort_keys=False)


def gpt_params(cfg: TransformerConfig, vocab: Vocabulary) -> dict:
    return {"vocab_size": vocab.size, "block_size": vocab.block_size, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_embd": cfg.n_embd, "embd_pdrop": cfg.embd_pdrop,
            "resid_pdrop": cfg.resid_pdrop, "attn_pdrop": cfg.attn_pdrop}


def run(cfg: TransformerConfig, tokens: Path = TOKENS, out: Path = OUT) -> Path:
    import lightning as L

    from tasks.lit_transformer import LitTransformer
    from tasks.tokens import TokenDataset, list_parts, token_loader
    from tasks.training import finish, make_trainer, resume_checkpoint

    train_set = TokenDataset(tokens / "train")
    meta = train_set.meta
    check_token_sources(meta, tokens / "train")
    val_set = None
    if list_parts(tokens / "validation"):
        val_set = TokenDataset(tokens / "validation")
        if val_set.meta != meta:
            raise TokensMismatch(f"{tokens / 'validation'}: metadata differs from {tokens / 'train'}; "
                                 "rerun `taming tokenize`")
    vocab = Vocabulary.of(meta, cfg.label_dropout)
    resume = resume_checkpoint(out, cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    stages = {prefix: str(vqgan_checkpoint(codes))
              for prefix, codes in (("first_stage_model", meta.image), ("cond_stage_model", meta.cond))
              if codes.sha256 is not None}
    module = LitTransformer(
        gpt=gpt_params(cfg, vocab), unconditional=meta.cond.kind == "none", pkeep=cfg.pkeep,
        cond_dropout=cfg.label_dropout, null_token=vocab.null_token, learning_rate=cfg.learning_rate(),
        weight_decay=cfg.weight_decay, betas=cfg.betas, warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio, stage_checkpoints=stages)
    trainer = make_trainer(out, max_steps=cfg.max_steps, devices=cfg.devices, val_every=cfg.val_every,
                           ckpt_every=cfg.ckpt_every, resuming=resume is not None,
                           accumulate_grad_batches=cfg.accumulate_grad_batches)
    train = token_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=len(train_set) >= cfg.batch_size)
    val = token_loader(val_set, cfg.batch_size, shuffle=False) if val_set is not None else None
    trainer.fit(module, train, val, ckpt_path=resume)
    return finish(trainer, out, out / "configs" / "transformer-project.yaml", project_yaml(cfg, meta, vocab))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    cfg = from_params(TransformerConfig, args.params, "transformer", args.overrides)
    try:
        run(cfg)
    except TokensMismatch as e:
        print(f"taming train-transformer: {e}", file=sys.stderr)
        return 1
    return 0
