"""What the two training stages share: Lightning Trainer setup, progress, resume, DVCLive,
the lock on the output and the guard against non-finite losses.

One run per output: a run holds the lock ``<out>/../.<name>.lock``
(tasks/runtime/locks.py), so a second run on the same folder is refused naming the first.

Resume after a kill works like this. The in-progress Lightning checkpoint lives
in ``<out>/resume/last.ckpt`` beside a fingerprint of the stage's config *and of its
inputs* (the stage says what they are: images and maps, token store manifests, VQGAN
hashes). A rerun with the same fingerprint continues from that checkpoint; one with a
changed config or changed inputs says which changed and starts afresh. On one device
the resumed run is bit-identical to an uninterrupted one: the checkpoint also holds
the number of batches trained (the data order is tasks/training/batches.py's, a
function of the seed and the batch number) and torch's RNG states (dropout, pkeep).

DVCLive writes into ``<out>/resume/dvclive`` while training and the folder becomes the
stage's DVCLive folder (``data/dvclive/...``) when training ends. So DVC, which deletes a stage's outputs before
rerunning it, never deletes the history of a run that will resume, and a resumed run
first drops the rows its killed predecessor logged after the checkpoint (they are
logged again). The resume folder is not a DVC output; on success the final checkpoint
is moved to the output path.

A finished run leaves a continuation point in the resume folder: a hard link to its
final checkpoint (no copy, however large), a copy of its DVCLive history and its
fingerprint. Raising ``max_steps`` with nothing else changed but how often it
validates and checkpoints continues from there instead of starting over (DVC deletes
the outputs first; the link keeps the checkpoint). The continuation point is renamed
before training so that no checkpoint write lands in the linked file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import Callback, ProgressBar

from tasks.config.schema import TrainingConfig
from tasks.data.files import write_json, write_text
from tasks.runtime import locks
from tasks.runtime.errors import StageError
from tasks.runtime.progress import progress
from tasks.training.batches import SeededBatches

RESUME_DIR = "resume"
CHECKPOINT = "last.ckpt"
CONTINUE_FROM = "continue-from.ckpt"   # a finished run's final checkpoint while a longer run continues it
DVCLIVE = "dvclive"
# How far and how often a run goes, not what it trains: a finished run continues when only these change.
SCHEDULE_KEYS = ("max_steps", "val_every", "ckpt_every")


def starts_training() -> bool:
    """False in the DDP ranks > 0 that Lightning launches as children of the process that started."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """The lock on a training output, held by the process that starts training."""
    with locks.hold(out_dir) if starts_training() else contextlib.nullcontext():
        yield


def _stamp(cfg, inputs: dict[str, str]) -> dict:
    """The run's fingerprint, and its course: the fingerprint without the schedule keys."""
    config = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

    def digest(settings: dict) -> str:
        return hashlib.sha256(json.dumps({"config": settings, "inputs": inputs}, sort_keys=True).encode()).hexdigest()
    course = {k: v for k, v in config.items() if k not in SCHEDULE_KEYS}
    return {"fingerprint": digest(config), "course": digest(course), "config": config, "inputs": inputs}


def _changes(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.get("config", {}).keys() | new["config"].keys()
                  if old.get("config", {}).get(k) != new["config"].get(k))
    inputs = sorted(k for k in old.get("inputs", {}).keys() | new["inputs"].keys()
                    if old.get("inputs", {}).get(k) != new["inputs"].get(k))
    said = ([f"its inputs changed ({', '.join(inputs)})"] if inputs else []) + \
           ([f"the parameters changed ({', '.join(keys)})"] if keys else [])
    return " and ".join(said) or "it was made by another version"


def resume_checkpoint(out_dir: Path, log_dir: Path, cfg, inputs: dict[str, str], stage: str) -> Path | None:
    """The checkpoint to resume or continue from, or None after clearing what an earlier run left.

    ``inputs`` names and identifies everything the run reads besides ``cfg`` (a hash per
    input). An interrupted run resumes only if both are unchanged; a finished run continues
    if only the schedule changed and ``max_steps`` grew. Otherwise this says why not."""
    folder = out_dir / RESUME_DIR
    stamp = folder / "fingerprint.json"
    want = _stamp(cfg, inputs)
    old = json.loads(stamp.read_text()) if stamp.is_file() else None
    ckpt = next((c for c in (folder / CHECKPOINT, folder / CONTINUE_FROM) if c.is_file()), None)
    finished = (old or {}).get("finished_step")
    if ckpt and old and finished is None and old.get("fingerprint") == want["fingerprint"]:
        return ckpt
    if not starts_training():   # DDP ranks > 0 follow the first process's decision
        return ckpt if ckpt and finished is not None and old.get("course") == want["course"] \
            and cfg.max_steps > finished else None
    if ckpt and finished is not None and old.get("course") == want["course"] and cfg.max_steps > finished:
        # Lightning writes checkpoints in place: the linked final checkpoint must not be one of them
        os.replace(ckpt, folder / CONTINUE_FROM)
        write_json(stamp, want)       # an interrupted continuation resumes like any run
        print(f"{stage}: continuing the finished run from step {finished} to {cfg.max_steps}")
        return folder / CONTINUE_FROM
    if ckpt:
        why = (f"max_steps {cfg.max_steps} is not above the {finished} it finished at"
               if finished is not None and old.get("course") == want["course"] else
               f"{_changes(old or {}, want)} since it was written")
        print(f"{stage}: not {'continuing' if finished is not None else 'resuming'} from {ckpt}: {why}; "
              "starting afresh")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(log_dir, ignore_errors=True)   # an earlier run's history, replaced at the end
    write_json(stamp, want)
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


class ResumeState(Callback):
    """What a Lightning checkpoint lacks for an exact resume: the number of training batches
    done (the position in ``SeededBatches``) and torch's RNG states (dropout, pkeep)."""

    def __init__(self, batches: SeededBatches):
        self.batches, self.done, self.rng, self.set_logging_step = batches, 0, None, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.done += 1

    def state_dict(self) -> dict:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"batches_done": self.done, "cpu_rng": torch.get_rng_state(), "cuda_rng": cuda}

    def load_state_dict(self, state: dict) -> None:
        self.done = self.batches.start = state["batches_done"]   # before Lightning starts iterating
        self.rng, self.set_logging_step = state, True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.set_logging_step:
            # Lightning infers a restored run's logging step from where its checkpoint was saved, and
            # is one too far for a checkpoint saved after fit (a finished run being continued)
            self.set_logging_step = False
            trainer.fit_loop.epoch_loop._batches_that_stepped = self.done // trainer.accumulate_grad_batches

    def on_train_start(self, trainer, pl_module) -> None:
        if self.rng is not None:  # after everything that draws from the RNG while setting up
            torch.set_rng_state(self.rng["cpu_rng"])
            if self.rng["cuda_rng"]:
                torch.cuda.set_rng_state_all(self.rng["cuda_rng"])


class NonFiniteError(StageError):
    """Training produced a NaN or infinite loss or parameter."""


class FiniteGuard(Callback):
    """Stops training at the first non-finite loss (any scalar the step returns) or parameter,
    before a checkpoint can keep it: rc=0 with NaN weights is worse than an error."""

    def __init__(self, stage: str, steps_per_update: int = 1):
        self.stage, self.steps_per_update = stage, steps_per_update

    def _stop(self, trainer, what: str) -> None:
        step = trainer.global_step // self.steps_per_update
        raise NonFiniteError(f"{self.stage}: {what} at step {step} of {trainer.max_steps // self.steps_per_update}; "
                             "training stopped (the resume checkpoint holds the last finite state). "
                             "A smaller learning rate usually helps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = outputs if isinstance(outputs, dict) else {"loss": outputs}
        for name, value in values.items():
            if torch.is_tensor(value) and value.numel() == 1 and not torch.isfinite(value):
                self._stop(trainer, f"the {name} is {value.item()}")
        params = [p for p in pl_module.parameters() if p.requires_grad]
        if params and not torch.isfinite(torch.nn.utils.get_total_norm(params, norm_type=math.inf)):
            name, p = next((n, p) for n, p in pl_module.named_parameters() if p.requires_grad
                           and not torch.isfinite(p).all())
            self._stop(trainer, f"parameter {name} holds {p[~torch.isfinite(p)].flatten()[0].item()}")


class ResumableDVCLive(DVCLiveLogger):
    """DVCLive's Lightning logger that, in a resumed run, first drops the rows the killed run
    logged at or after the first step logged now: Lightning logs them again."""

    def __init__(self, *args, resuming: bool, **kwargs):
        super().__init__(*args, resume=resuming, **kwargs)
        self._trim = resuming

    def log_metrics(self, metrics, step=None) -> None:
        # the batches are one endless stream (batches.py): Lightning's epoch says nothing
        metrics = {name: value for name, value in metrics.items() if name != "epoch"}
        if not metrics:
            return
        if self._trim and step is not None:
            self._trim = False
            for tsv in Path(self.experiment.plots_dir, "metrics").rglob("*.tsv"):
                header, *rows = tsv.read_text().splitlines(keepends=True)
                column = header.rstrip("\n").split("\t").index("step")
                write_text(tsv, header + "".join(r for r in rows if int(r.split("\t")[column]) < step))
        super().log_metrics(metrics, step)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Drop Lightning's advertising and a deprecation warning torch raises inside it."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    # a manual-optimisation checkpoint holds the state after the step, which is what resume needs
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def make_trainer(out_dir: Path, cfg: TrainingConfig, *, desc: str, resuming: bool, batches: SeededBatches,
                 manual_optimization: bool = False, optimizer_steps_per_update: int = 1,
                 find_unused_parameters: bool = False) -> L.Trainer:
    """A Trainer that logs to ``<out>/resume/dvclive`` and checkpoints to ``<out>/resume``.

    ``batches`` is the training set's ``SeededBatches``, whose position the checkpoints keep.
    ``max_steps``/``ckpt_every`` count parameter updates; Lightning counts one
    global step per ``optimizer.step()``, so a GAN with two optimisers passes
    ``optimizer_steps_per_update=2``. With ``manual_optimization`` the module
    accumulates gradients itself (Lightning refuses to).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    quiet_lightning()
    accel, precision = accelerator()
    strategy = "auto"
    if cfg.devices > 1:
        strategy = "ddp_find_unused_parameters_true" if find_unused_parameters else "ddp"
    logger = ResumableDVCLive(dir=str(out_dir / RESUME_DIR / DVCLIVE), resuming=resuming, save_dvc_exp=False,
                              dvcyaml=False, report=None)
    checkpoint = ModelCheckpoint(dirpath=out_dir / RESUME_DIR, save_last=True, save_top_k=0,
                                 every_n_train_steps=cfg.ckpt_every * optimizer_steps_per_update,
                                 enable_version_counter=False)
    return L.Trainer(
        accelerator=accel, devices=cfg.devices, strategy=strategy, precision=precision,
        max_steps=cfg.max_steps * optimizer_steps_per_update, max_epochs=-1,
        val_check_interval=cfg.val_every * cfg.accumulate_grad_batches, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=logger,
        callbacks=[FiniteGuard(desc, optimizer_steps_per_update), ResumeState(batches), checkpoint,
                   StepProgress(desc, optimizer_steps_per_update)],
        accumulate_grad_batches=1 if manual_optimization else cfg.accumulate_grad_batches,
        log_every_n_steps=max(1, min(10, cfg.val_every // 5)), enable_model_summary=False,
        default_root_dir=str(out_dir),
    )


def finish(trainer: L.Trainer, out_dir: Path, log_dir: Path, project_yaml: Path, project_text: str) -> Path:
    """Save the final checkpoint to ``<out>/checkpoints/last.ckpt`` with its project YAML, and
    DVCLive's history to ``log_dir``; leave the continuation point (see the module's doc)."""
    folder = out_dir / RESUME_DIR
    resume = folder / CHECKPOINT
    trainer.save_checkpoint(resume, weights_only=False)  # collective under DDP; rank 0 writes
    final = out_dir / "checkpoints" / CHECKPOINT
    if trainer.is_global_zero:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(resume, final)
        write_text(project_yaml, project_text)
        shutil.rmtree(log_dir, ignore_errors=True)
        log_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / DVCLIVE, log_dir)
        (folder / CONTINUE_FROM).unlink(missing_ok=True)
        _link_or_copy(final, resume)
        shutil.copytree(log_dir, folder / DVCLIVE)
        stamp = folder / "fingerprint.json"
        run = json.loads(stamp.read_text())          # written when this run started
        write_json(stamp, {**run, "finished_step": run["config"]["max_steps"]})
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:          # a filesystem without hard links
        shutil.copy2(source, target)
