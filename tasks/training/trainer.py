"""What the two training stages share: Lightning Trainer setup, progress, resume, DVCLive.

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
import logging
import os
import shutil
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from tasks.config.schema import TrainingConfig
from tasks.data.files import write_json, write_text
from tasks.runtime.progress import progress

RESUME_DIR = "resume"
CHECKPOINT = "last.ckpt"


def fingerprint(cfg) -> str:
    blob = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


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


class StepProgress(ProgressBar):
    """Parameter updates done of ``max_steps``, with rate and ETA and the progress-bar
    metrics (losses): a bar on a terminal, a line every 30 s in a log (tasks/runtime/progress.py).
    Lightning's own bar counts batches per epoch (``Epoch 4/-2``), meaningless for step-based runs."""

    def __init__(self, desc: str, steps_per_update: int = 1):
        super().__init__()
        self.desc, self.steps_per_update = desc, steps_per_update
        self.bar = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _updates(self, trainer) -> int:
        return trainer.global_step // self.steps_per_update

    def on_train_start(self, trainer, pl_module) -> None:
        if self._enabled and trainer.is_global_zero:
            total = trainer.max_steps // self.steps_per_update
            self.bar = progress(total=total, initial=self._updates(trainer), desc=self.desc, unit="step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix({k: f"{float(v):.4g}" for k, v in self.get_metrics(trainer, pl_module).items()
                              if k != "v_num"}, refresh=False)
        self.bar.update(self._updates(trainer) - self.bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Drop Lightning's advertising and a deprecation warning torch raises inside it."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    # a manual-optimisation checkpoint holds the state after the step, which is what resume needs
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def make_trainer(out_dir: Path, log_dir: Path, cfg: TrainingConfig, *, desc: str, resuming: bool,
                 manual_optimization: bool = False, optimizer_steps_per_update: int = 1,
                 find_unused_parameters: bool = False) -> L.Trainer:
    """A Trainer that logs to DVCLive in ``log_dir`` and checkpoints to ``<out>/resume``.

    ``max_steps``/``ckpt_every`` count parameter updates; Lightning counts one
    global step per ``optimizer.step()``, so a GAN with two optimisers passes
    ``optimizer_steps_per_update=2``. With ``manual_optimization`` the module
    accumulates gradients itself (Lightning refuses to).
    """
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.callbacks import ModelCheckpoint

    quiet_lightning()
    accel, precision = accelerator()
    strategy = "auto"
    if cfg.devices > 1:
        strategy = "ddp_find_unused_parameters_true" if find_unused_parameters else "ddp"
    logger = DVCLiveLogger(dir=str(log_dir), resume=resuming, save_dvc_exp=False,
                           dvcyaml=False, report=None)
    checkpoint = ModelCheckpoint(dirpath=out_dir / RESUME_DIR, save_last=True, save_top_k=0,
                                 every_n_train_steps=cfg.ckpt_every * optimizer_steps_per_update,
                                 enable_version_counter=False)
    return L.Trainer(
        accelerator=accel, devices=cfg.devices, strategy=strategy, precision=precision,
        max_steps=cfg.max_steps * optimizer_steps_per_update, max_epochs=-1,
        val_check_interval=cfg.val_every * cfg.accumulate_grad_batches, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=logger,
        callbacks=[checkpoint, StepProgress(desc, optimizer_steps_per_update)],
        accumulate_grad_batches=1 if manual_optimization else cfg.accumulate_grad_batches,
        log_every_n_steps=max(1, min(10, cfg.val_every // 5)), enable_model_summary=False,
        default_root_dir=str(out_dir),
    )


def finish(trainer: L.Trainer, out_dir: Path, project_yaml: Path, project_text: str) -> Path:
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
