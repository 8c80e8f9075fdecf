"""Read training checkpoints without running code from them.

Lightning checkpoints are pickles. Unpickling may call any function the file names
(`__reduce__`), so a downloaded checkpoint is an attack vector. We only ever unpickle
with `torch.load(weights_only=True)`, whose unpickler builds tensors and plain
containers and refuses every other global. pytorch-lightning 1.x checkpoints (all the
published taming ones) also name Lightning classes, e.g. `callbacks` is keyed by the
ModelCheckpoint *class*; each such name is bound to an inert stand-in that only holds
data, so these files load without Lightning installed and without importing it.
Any other global (os.system, builtins.eval, a function in some module...) is refused
with UnsafeCheckpointError before anything is unpickled.

Memory follows the bytes the file holds (models/limits.py): before torch reads the zip,
its members must be stored uncompressed and must not overlap; after unpickling, which
only maps storages, no tensor may claim more bytes than its storage holds.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Iterator

import torch

from models.errors import ModelFileError
from models.limits import MAX_PICKLE_BYTES

# bookkeeping classes a Lightning checkpoint may name (callbacks, hparams containers)
LIGHTNING_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.")


class UnsafeCheckpointError(pickle.UnpicklingError, ModelFileError):
    """The checkpoint's pickle names code we will not run."""


class CheckpointError(ModelFileError, ValueError):
    """The file is not a readable checkpoint, or not the checkpoint that was expected."""


class LightningStandIn(dict):
    """Takes the place of a Lightning class named in a checkpoint: records what the
    pickle gives it (constructor args, dict items, state) and does nothing else."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<stand-in for {type(self).__module__}.{type(self).__qualname__}>"


def _stand_in(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name, (LightningStandIn,), {"__module__": module, "__qualname__": name})


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's full dict (on CPU), Lightning classes replaced by stand-ins.
    Raises UnsafeCheckpointError if the pickle names any other code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    stand_ins = []
    if zipfile.is_zipfile(path):  # torch >= 1.6 format: vet every global before unpickling
        _check_archive(path)
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - a broken archive, whatever the library raises
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
        refused = sorted(n for n in names if not n.startswith(LIGHTNING_PREFIXES))
        if refused:
            raise UnsafeCheckpointError(
                f"{path}: refusing to load: its pickle names {', '.join(refused)}, which would run "
                "code while loading. Only tensors, plain containers and Lightning bookkeeping "
                "classes are accepted. If you trust this file, re-save just its state_dict.")
        stand_ins = [(_stand_in(n), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler refused something
        raise UnsafeCheckpointError(f"{path}: refusing to load: its pickle needs more than tensors "
                                    f"and plain containers ({_refusal_reason(e)})") from None
    except (RuntimeError, EOFError, OSError, AttributeError, TypeError, KeyError, IndexError, ValueError) as e:
        # truncated or malformed archives, pickles that do not fit the stand-ins
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    for where, t in _tensors(ckpt):
        claimed, stored = t.numel() * t.element_size(), t.untyped_storage().nbytes()
        if claimed > stored:
            raise CheckpointError(f"{path}: tensor {where} of shape {tuple(t.shape)} claims {claimed} bytes but its "
                                  f"storage holds {stored} (an expanded view); refusing to load it")
    return ckpt


def _refusal_reason(e: Exception) -> str:
    """torch's reason for refusing, without its advice to retry with weights_only=False."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    paragraphs = [p.strip() for p in str(e).split("\n\n") if p.strip()]
    reasons = [p for p in paragraphs if not p.startswith(boilerplate)] or ["unsupported pickle content"]
    return reasons[0].removeprefix("WeightsUnpickler error:").strip().splitlines()[0]


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """(state_dict, global_step) of a Lightning checkpoint (1.x or 2.x) or a bare state dict."""
    ckpt = read_checkpoint(path)
    if "state_dict" in ckpt:
        state_dict, step = ckpt["state_dict"], ckpt.get("global_step")
    else:
        state_dict, step = ckpt, None
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:5]}")
    return dict(state_dict), (int(step) if step is not None else None)


def _check_archive(path: Path) -> None:
    """torch.save stores every zip member uncompressed, one after another. Refuse anything
    else before torch reads it: compressed members (a zip bomb: ~1000 bytes per stored byte) and
    members that overlap, which together claim more bytes than the file has."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    for m in members:
        if m.filename.endswith("data.pkl") and m.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: its pickle {m.filename} has {m.file_size} bytes, more than the limit "
                                  f"of {MAX_PICKLE_BYTES}; refusing to unpickle it")
        if m.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: member {m.filename} is compressed (zip method {m.compress_type}); "
                                  f"torch.save never compresses, refusing to inflate it")
    claimed, size = sum(m.file_size for m in members), path.stat().st_size
    if claimed > size:
        raise CheckpointError(f"{path}: its members claim {claimed} bytes, more than the file's {size} "
                              f"(overlapping members); refusing to load it")


_WALKED = (torch.Tensor, dict, list, tuple, set)


def _tensors(obj) -> Iterator[tuple[str, torch.Tensor]]:
    """(where, tensor) for every tensor in a loaded checkpoint: containers are walked
    without recursion (a pickle nests as deep as it likes), each object once."""
    stack, seen = [("", obj)], {id(obj)}
    while stack:
        where, x = stack.pop()
        if isinstance(x, torch.Tensor):
            yield where, x
            continue
        children = [(f"[{k!r}]", v) for k, v in (x.items() if isinstance(x, dict) else enumerate(x))
                    if isinstance(v, _WALKED)]
        if isinstance(x, LightningStandIn):
            children += [(f".{name}", getattr(x, name)) for name in ("args", "kwargs", "state")]
        for key, child in children:
            if isinstance(child, _WALKED) and id(child) not in seen:
                seen.add(id(child))
                stack.append((where + key, child))
