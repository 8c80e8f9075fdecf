"""Which device a stage computes on: ``auto`` is CUDA when present, else the CPU."""
from __future__ import annotations


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
