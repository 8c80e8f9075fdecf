"""What the model layer accepts from untrusted files: checkpoints, project YAMLs and the
code lists (``remap``) they name.

A checkpoint downloaded or fetched from S3 is untrusted, and so is the YAML beside it.
Memory must follow the bytes a file really holds, never a size it declares:

- checkpoints (models/checkpoint.py): every member of the zip is stored uncompressed,
  as torch.save writes them (deflate packs up to ~1000 bytes into one: a zip bomb),
  members do not overlap (together they hold at most the file's bytes), the pickle is
  bounded, and no tensor claims more bytes than its storage holds (a stride-0 view of
  2**31 elements costs 8 bytes on disk and 16 GiB once copied);
- project YAMLs: every model built from one goes through ``build_within_limits``, which
  builds it first on PyTorch's meta device (no memory) and refuses it above the limits;
- ``remap`` code lists: a regular file (not a FIFO or device) holding at most one entry
  per codebook entry, checked from the .npy header before the array is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from models.errors import ModelFileError

T = TypeVar("T")

# Bytes of a checkpoint's pickle (data.pkl: the dicts and lists around the tensors, whose
# bytes are stored beside it). Unpickled Python objects take many times their pickled size;
# a Lightning checkpoint's pickle is tens to hundreds of KB.
MAX_PICKLE_BYTES = 64 * 2**20

# Parameters and buffers of a model a project YAML describes. The largest published
# taming transformers have about 1.4 billion float32 parameters (5.6 GB).
MAX_MODEL_BYTES = 16 * 2**30

# nn.Modules in such a model: each costs memory even on the meta device, so a YAML asking
# for a billion layers is refused early. The largest published models have under 2000.
MAX_MODEL_MODULES = 10_000

# Positions of a transformer's latent grid that a permuter orders (H x W): a 256 x 256 grid.
MAX_GRID_TOKENS = 256 * 256


class ModelTooLarge(ModelFileError):
    """A project YAML describes a model beyond MAX_MODEL_BYTES or MAX_MODEL_MODULES."""


def build_within_limits(build: Callable[[], T], source: str | Path) -> T:
    """``build()``, once it has run on the meta device (tensors without memory) with every
    parameter, buffer and module counted as it is registered: ModelTooLarge naming
    ``source`` as soon as a limit is passed, before anything is allocated."""
    import torch
    from torch.nn.modules import module as torch_module

    total = {"bytes": 0, "modules": 0}

    def tensor(module, name, t):
        if t is not None:
            total["bytes"] += t.numel() * t.element_size()
            if total["bytes"] > MAX_MODEL_BYTES:
                raise ModelTooLarge(f"{source}: refusing to build the model it describes: its parameters and "
                                    f"buffers pass {MAX_MODEL_BYTES} bytes (at {name} of shape {tuple(t.shape)} "
                                    f"in a {type(module).__name__}; models/limits.py)")

    def submodule(module, name, child):
        total["modules"] += 1
        if total["modules"] > MAX_MODEL_MODULES:
            raise ModelTooLarge(f"{source}: refusing to build the model it describes: it has more than "
                                f"{MAX_MODEL_MODULES} modules (models/limits.py)")

    hooks = [torch_module.register_module_parameter_registration_hook(tensor),
             torch_module.register_module_buffer_registration_hook(tensor),
             torch_module.register_module_module_registration_hook(submodule)]
    try:
        with torch.device("meta"):
            build()
    finally:
        for hook in hooks:
            hook.remove()
    return build()
