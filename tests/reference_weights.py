"""The reference vectors' weight-fill rule (tests/reference/midas_deeplab/README.md):
deterministic weights that depend only on each state_dict entry's name."""
from __future__ import annotations

import json
import math
import os
import zlib

import torch


def fill_reference(model: torch.nn.Module) -> torch.nn.Module:
    """Load the rule's state dict strictly and return the model in eval mode."""
    state = {}
    for name, t in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(t)
        elif name.endswith("running_mean"):
            state[name] = torch.zeros_like(t)
        elif name.endswith("running_var"):
            state[name] = torch.ones_like(t)
        else:
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            r = torch.randn(t.shape, generator=g, dtype=torch.float32)
            state[name] = r / math.sqrt(t[0].numel()) if t.dim() > 1 else (1.0 + 0.1 * r if name.endswith("weight") else 0.1 * r)
    model.load_state_dict(state, strict=True)
    return model.eval()


def reference_layout(reference_dir: str, name: str) -> list[tuple[str, tuple[int, ...], str]]:
    with open(os.path.join(reference_dir, "midas_deeplab", f"{name}.keys.json")) as f:
        return [(k, tuple(shape), dtype) for k, shape, dtype in json.load(f)]


def layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()
