"""Torch modules and their I/O: VQGAN, transformer, annotators, checkpoint loading,
weight resolution. Knows nothing of DVC, Prefect or stage file layouts.

Submodules are imported lazily so ``import models`` stays cheap.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "load_pretrained": "models.pretrained",
    "load_with_report": "models.pretrained",
    "ModelFolder": "models.folder",
    "load_first_stage": "models.first_stage",
    "read_checkpoint": "models.checkpoint",
    "UnsafeCheckpointError": "models.checkpoint",
    "VQModel": "models.vqgan",
    "GumbelVQ": "models.vqgan",
    "VQSegmentationModel": "models.vqgan",
    "VQLPIPSWithDiscriminator": "models.losses",
    "CodebookUsage": "models.quantize",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
