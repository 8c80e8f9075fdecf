"""Stage `train-transformer`: the conditional transformer, from Parquet tokens only.

Reads ``data/tokens/{train,validation}`` (written by `taming tokenize`) and params
section ``transformer``. It never runs a VQGAN: the VQGAN checkpoints are only
hashed (the tokens must come from exactly these weights) and their tensors copied
into the output checkpoint. Writes, in the original project's layout,

    data/transformer/checkpoints/last.ckpt
    data/transformer/configs/transformer-project.yaml   # taming.models.cond_transformer.Net2NetTransformer
                                                        # (scenes: + `objects:`, the builder and categories)
    data/dvclive/transformer/                           # metrics.json, plots/metrics

so ``models.load_pretrained("data/transformer")`` loads it. A killed run resumes
from ``data/transformer/resume/`` while its parameters and inputs (the token manifests,
the VQGAN hashes: ``inputs``) are unchanged, bit-identically on one device
(tasks/training/trainer.py); a second run is refused while one runs.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tasks.config.schema import TransformerConfig
from tasks.data.layout import DATA, Layout
from tasks.runtime.errors import StageError

if TYPE_CHECKING:  # pyarrow only when the stage runs
    from tasks.data.token_store import Codes, TokenMeta


class TokensMismatch(StageError):
    """The token files do not belong to the VQGAN checkpoints on disk."""


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


def vqgan_folder(codes: Codes):
    """The VQGAN folder that made a token column, as it is on disk now."""
    from models.folder import ModelFolder
    return ModelFolder.open(codes.folder)


def check_token_sources(meta: TokenMeta, where: Path) -> None:
    """The tokens must have been made by the VQGAN checkpoints that are on disk now."""
    for role, codes in (("image", meta.image), ("cond", meta.cond)):
        if codes.sha256 is None:
            continue
        ckpt = Path(codes.folder) / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise TokensMismatch(f"{where}: {role} tokens come from {ckpt}, which does not exist")
        actual = vqgan_folder(codes).sha256
        if actual != codes.sha256:
            raise TokensMismatch(
                f"{where}: {role} tokens were made by a VQGAN checkpoint with SHA-256 {codes.sha256[:12]}..., "
                f"but {ckpt} now has {actual[:12]}...; rerun `taming tokenize` (or `dvc repro`)")


def project_yaml(cfg: TransformerConfig, meta: TokenMeta, vocab: Vocabulary) -> str:
    cond = meta.cond
    if cond.kind == "none":
        cond_key, cond_config = meta.image.kind, "__is_unconditional__"
    elif cond.kind == "class":
        cond_key, cond_config = "class_label", {"target": "taming.modules.util.Labelator",
                                                "params": {"n_classes": cond.vocab_size}}
    elif cond.kind == "coord":   # the original FacesHQ's: positions on the image's token grid
        cond_key, cond_config = "coord", {"target": "taming.modules.misc.coord.CoordStage",
                                          "params": {"n_embed": cond.vocab_size,
                                                     "down_factor": meta.size // cond.grid[0]}}
    elif cond.builder is not None:   # a scene: the builder's tokens pass through, as in the original's configs
        cond_key, cond_config = cond.kind, {"target": "taming.models.dummy_cond_stage.DummyCondStage",
                                            "params": {"conditional_key": cond.kind}}
    else:
        cond_key, cond_config = cond.kind, vqgan_folder(cond).stage_config()
    params = {
        "cond_stage_key": cond_key,
        "pkeep": cfg.pkeep,
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": gpt_params(cfg, vocab)},
        "first_stage_config": vqgan_folder(meta.image).stage_config(),
        "cond_stage_config": cond_config,
    }
    if vocab.null_token is not None:  # trained with condition dropout: sampling can use guidance
        params.update(null_token=vocab.null_token, cond_dropout=cfg.label_dropout)
    doc = {"model": {"base_learning_rate": cfg.base_learning_rate,
                     "target": "taming.models.cond_transformer.Net2NetTransformer", "params": params}}
    if cond.builder is not None:   # what a sampler needs to build sequences from boxes (SceneConditioning)
        doc["objects"] = cond.builder
    return yaml.safe_dump(doc, sort_keys=False)


def gpt_params(cfg: TransformerConfig, vocab: Vocabulary) -> dict:
    return {"vocab_size": vocab.size, "block_size": vocab.block_size, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_embd": cfg.n_embd, "embd_pdrop": cfg.embd_pdrop,
            "resid_pdrop": cfg.resid_pdrop, "attn_pdrop": cfg.attn_pdrop}


def init_weights(module, cfg: TransformerConfig, meta: TokenMeta) -> None:
    """Fine-tuning: start from the GPT of the transformer folder ``cfg.init_from``. Its
    architecture must be this run's, and its first stage the one that made the tokens (the
    GPT's image tokens mean that VQGAN's codes)."""
    import torch

    from models.checkpoint import read_state_dict
    from models.folder import ModelFolder

    source = ModelFolder.open(cfg.init_from)
    where = f"transformer.init_from {cfg.init_from}"
    if not source.is_transformer:
        raise StageError(f"{where}: holds a {source.target}, not a transformer")
    state, _ = read_state_dict(source.checkpoint)
    gpt = {k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")}
    ours = module.model.transformer.state_dict()
    mismatched = sorted(k for k in ours if k not in gpt or gpt[k].shape != ours[k].shape)
    if mismatched:
        raise StageError(f"{where}: its GPT does not fit this run's transformer settings "
                         f"({len(mismatched)} parameters differ, e.g. {mismatched[:3]}): set n_layer, n_head, "
                         f"n_embd and the vocabulary as it was trained")
    codebook = state.get("first_stage_model.quantize.embedding.weight")
    first_stage, _ = read_state_dict(vqgan_folder(meta.image).checkpoint)
    if codebook is None or not torch.equal(codebook, first_stage["quantize.embedding.weight"]):
        raise StageError(f"{where}: its first stage is not the VQGAN that made the tokens ({meta.image.folder}); "
                         f"fine-tune on tokens of the same first stage (vqgan.image: {{folder: <its first stage>}})")
    module.model.transformer.load_state_dict({k: gpt[k] for k in ours}, strict=True)
    print(f"train-transformer: starting from the GPT of {source.root} (SHA-256 {source.sha256[:12]}...)")


def inputs(train_set, val_set) -> dict[str, str]:
    """What a run reads besides its parameters, identified for resuming: the token store's
    manifests (each part's SHA-256) and the VQGAN checkpoints the tokens came from."""
    meta = train_set.meta
    found = {"tokens/train": train_set.manifest_sha256,
             "tokens/validation": val_set.manifest_sha256 if val_set is not None else "none"}
    found.update({f"{codes.kind} VQGAN": codes.sha256 for codes in (meta.image, meta.cond) if codes.sha256})
    return found


def run(cfg: TransformerConfig, layout: Layout = DATA) -> Path:
    import lightning as L
    from torch.utils.data import DataLoader

    from tasks.data.token_store import TokenDataset, list_parts, token_loader
    from tasks.training.batches import SeededBatches
    from tasks.training.lit_transformer import LitTransformer
    from tasks.training.trainer import exclusive, finish, make_trainer, resume_checkpoint

    tokens, out, logs = layout.tokens, layout.transformer, layout.logs("transformer")
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
    with exclusive(out):
        resume = resume_checkpoint(out, logs, cfg, inputs(train_set, val_set), "train-transformer")
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        stages = {prefix: str(vqgan_folder(codes).checkpoint)
                  for prefix, codes in (("first_stage_model", meta.image), ("cond_stage_model", meta.cond))
                  if codes.sha256 is not None}
        module = LitTransformer(
            gpt=gpt_params(cfg, vocab), unconditional=meta.cond.kind == "none", pkeep=cfg.pkeep,
            cond_dropout=cfg.label_dropout, null_token=vocab.null_token, learning_rate=cfg.learning_rate(),
            weight_decay=cfg.weight_decay, betas=cfg.betas, warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio, stage_checkpoints=stages)
        if cfg.init_from and resume is None:
            init_weights(module, cfg, meta)
        batches = SeededBatches(train_set, cfg.batch_size, cfg.seed)
        trainer = make_trainer(out, cfg, desc="train-transformer", resuming=resume is not None, batches=batches)
        val = token_loader(val_set, cfg.batch_size, shuffle=False) if val_set is not None else None
        trainer.fit(module, DataLoader(batches, batch_size=None), val, ckpt_path=resume)
        return finish(trainer, out, logs, out / "configs" / "transformer-project.yaml", project_yaml(cfg, meta, vocab))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(config, args: argparse.Namespace) -> None:
    run(config.transformer)
