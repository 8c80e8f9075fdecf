"""What the two training stages share: Lightning Trainer setup, resume, DVCLive.

Resume after a kill works like this. The in-progress Lightning checkpoint lives
in ``<out>/resume/last.ckpt`` beside a fingerprint of the stage's config. A
rerun with the same fingerprint continues from that checkpoint (same
global_step, optimiser state and data order); a rerun with a changed config
starts afresh. The resume folder is not a DVC output (DVC deletes outputs
before it reruns a stage); on success the final checkpoint is moved to the
output path and the resume folder is removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from tasks.io import write_json, write_text

RESUME_DIR = "resume"
CHECKPOINT = "last.ckpt"


def learning_rate(base: float, batch_size: int, devices: int, accumulate: int) -> float:
    """The original's scaling: lr = base x batch x devices x accumulation."""
    return base * batch_size * devices * accumulate


def fingerprint(cfg) -> str:
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resume_checkpoint(out_dir: Path, cfg) -> Path | None:
    """The checkpoint to resume from, or None (and a clean resume folder for a fresh run)."""
    folder = out_dir / RESUME_DIR
    stamp = folder / "fingerprint.json"
    ckpt = folder / CHECKPOINT
    want = fingerprint(cfg)
    if ckpt.exists() and stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == want:
        return ckpt
    shutil.rmtree(folder, ignore_errors=True)
    write_json(stamp, {"fingerprint": want, "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str))})
    return None


def accelerator() -> tuple[str, str]:
    """(accelerator, precision): bf16 autocast on CUDA, plain fp32 on CPU."""
    import torch
    if torch.cuda.is_available():
        return "gpu", "bf16-mixed"
    return "cpu", "32-true"


def make_trainer(out_dir: Path, *, max_steps: int, devices: int, val_every: int, ckpt_every: int,
                 resuming: bool, accumulate_grad_batches: int = 1, manual_optimization: bool = False,
                 optimizer_steps_per_update: int = 1, find_unused_parameters: bool = False):
    """A Trainer that logs to ``<out>/dvclive`` and checkpoints to ``<out>/resume``.

    ``max_steps``/``ckpt_every`` count parameter updates; Lightning counts one
    global step per ``optimizer.step()``, so a GAN with two optimisers passes
    ``optimizer_steps_per_update=2``. With ``manual_optimization`` the module
    accumulates gradients itself (Lightning refuses to).
    """
    import lightning as L
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.callbacks import ModelCheckpoint

    # a manual-optimisation checkpoint holds the state after the step, which is what resume needs
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

    accel, precision = accelerator()
    strategy = "auto"
    if devices > 1:
        strategy = "ddp_find_unused_parameters_true" if find_unused_parameters else "ddp"
    logger = DVCLiveLogger(dir=str(out_dir / "dvclive"), resume=resuming, save_dvc_exp=False,
                           dvcyaml=False, report=None)
    checkpoint = ModelCheckpoint(dirpath=out_dir / RESUME_DIR, save_last=True, save_top_k=0,
                                 every_n_train_steps=ckpt_every * optimizer_steps_per_update,
                                 enable_version_counter=False)
    return L.Trainer(
        accelerator=accel, devices=devices, strategy=strategy, precision=precision,
        max_steps=max_steps * optimizer_steps_per_update, max_epochs=-1,
        val_check_interval=val_every * accumulate_grad_batches, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=logger, callbacks=[checkpoint],
        accumulate_grad_batches=1 if manual_optimization else accumulate_grad_batches,
        log_every_n_steps=max(1, min(10, val_every // 5)), enable_model_summary=False,
        default_root_dir=str(out_dir),
    )


def finish(trainer, out_dir: Path, project_yaml: Path, project_text: str) -> Path:
    """Save the final checkpoint to ``<out>/checkpoints/last.ckpt`` with its project YAML."""
    resume = out_dir / RESUME_DIR / CHECKPOINT
    trainer.save_checkpoint(resume, weights_only=False)  # collective under DDP; rank 0 writes
    final = out_dir / "checkpoints" / CHECKPOINT
    if trainer.is_global_zero:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(resume, final)
        write_text(project_yaml, project_text)
        shutil.rmtree(out_dir / RESUME_DIR, ignore_errors=True)
    return final
