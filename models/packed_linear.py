"""Linear layers for sampling, with each weight packed once for the CPU's matmul library.

Sampling feeds one token per sequence per step, so every Linear of the GPT is a
(batch x in) @ (in x out) product whose time is the time to read the weight. On the
CPU, F.linear goes to MKL's sgemm; oneDNN, reading a copy of the weight reordered once
into its blocked layout, streams it about twice as fast (bench/sampling.py measures
both side by side). The sampler opts in around its loop:

    with packed_linears(gpt):
        logits, _ = gpt(token, cache=cache)

Inside the block each nn.Linear of the model computes through its packed copy, made on
first use and rebuilt when the weight changes (optimizer step, load_state_dict, .to());
outside it, the model is untouched. Layers on other devices, dtypes the CPU cannot run
in oneDNN (bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT) and anything under autograd
keep plain F.linear, so packing never changes what can run, only how fast.
"""
from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed-weight linear (the op Inductor's
    CPU freezing pass emits)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@functools.cache
def packing_supported(dtype: torch.dtype) -> bool:
    """Whether this CPU packs and multiplies weights of ``dtype`` in oneDNN. bf16 needs
    AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT: on an AVX2-only CPU oneDNN refuses to reorder
    a bf16 weight, so such models keep F.linear there."""
    if not onednn_linear_available():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class _PackedWeight:
    """oneDNN's copy of one layer's weight, tagged with the weight it was made from."""

    def __init__(self, layer: nn.Linear):
        self.key = self.key_of(layer)
        with torch.no_grad():
            self.weight = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())

    @staticmethod
    def key_of(layer: nn.Linear) -> tuple:
        w = layer.weight
        return w._version, w.data_ptr(), w.dtype


# Keyed by the layer, outside it: the opaque oneDNN tensor has no storage, so a model that
# held it could no longer be deep-copied or pickled.
_copies: weakref.WeakKeyDictionary[nn.Linear, _PackedWeight] = weakref.WeakKeyDictionary()


def _packed_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != layer.weight.dtype or (torch.is_grad_enabled() and layer.weight.requires_grad):
        return F.linear(x, layer.weight, layer.bias)
    packed = _copies.get(layer)
    if packed is None or packed.key != _PackedWeight.key_of(layer):
        packed = _copies[layer] = _PackedWeight(layer)
    bias = None if layer.bias is None else layer.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, packed.weight, bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every nn.Linear of ``model`` that this CPU can pack computes
    through its packed weight; ``enabled=False`` leaves the model as it is (to compare)."""
    layers = [m for m in model.modules()
              if enabled and isinstance(m, nn.Linear) and m.weight.device.type == "cpu"
              and packing_supported(m.weight.dtype) and "forward" not in m.__dict__]
    for layer in layers:  # an instance attribute shadows nn.Linear.forward
        layer.forward = functools.partial(_packed_forward, layer)
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward
