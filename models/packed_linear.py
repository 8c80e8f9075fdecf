"""Linear layers for inference, with the weight packed once for the CPU's matmul library.

Sampling feeds one token per sequence per step, so every Linear of the GPT is a
(batch x in) @ (in x out) product whose time is the time to read the weight. On
the CPU, F.linear goes to MKL's sgemm, which streams a weight at ~10 GB/s on the
2-core AMD EPYC this was developed on; oneDNN, reading a copy reordered once into
its blocked layout, streams ~21 GB/s (the layer mix of bench/sampling.py's GPT,
measured side by side: 10.4 ms vs 4.9 ms per step). The copy is made on first use
and rebuilt whenever a source parameter changes (optimizer step, load_state_dict,
.to()), so training never sees it. Everywhere else (CUDA, autograd, a torch built
without oneDNN) this is plain F.linear over the same weights.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.nn import functional as F


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed-weight linear (the op Inductor's
    CPU freezing pass emits)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


_packing = True


@contextlib.contextmanager
def unpacked():
    """Within this block every PackedLinear runs plain F.linear (bench/sampling.py
    times both, side by side)."""
    global _packing
    previous, _packing = _packing, False
    try:
        yield
    finally:
        _packing = previous


class PackedLinear:
    """x -> x W^T + b (then GELU if `gelu`) for one or more nn.Linear layers
    concatenated along their outputs (query, key and value as one product).

    Not a module: it holds no parameters of its own, only a derived copy of the
    layers' weights, so state_dicts and optimizers are unaffected. It follows the
    layer objects it was given: a model that swaps in a new nn.Linear builds a new one.
    """

    def __init__(self, *layers: nn.Linear, gelu: bool = False):
        if not layers:
            raise ValueError("PackedLinear needs at least one nn.Linear")
        self._layers = layers
        self.gelu = gelu
        self._key = None  # (versions and addresses of the source parameters, packed?)
        self._weight = self._bias = None

    # The packed copy is an opaque oneDNN tensor without storage: it cannot be
    # deep-copied or pickled, so copies (copy.deepcopy, torch.save of a model) leave
    # it behind and pack again on first use.
    def __getstate__(self) -> dict:
        return {"_layers": self._layers, "gelu": self.gelu}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _key=None, _weight=None, _bias=None)

    def _params(self) -> list[torch.Tensor]:
        return [p for layer in self._layers for p in (layer.weight, layer.bias) if p is not None]

    def _refresh(self, pack: bool) -> None:
        key = (tuple((p._version, p.data_ptr(), p.dtype) for p in self._params()), pack)
        if key == self._key:
            return
        with torch.no_grad():
            layers = self._layers
            if len(layers) == 1:  # no copy unless packing makes one
                weight, bias = layers[0].weight.detach(), layers[0].bias
                bias = None if bias is None else bias.detach()
            else:
                weight = torch.cat([layer.weight for layer in layers])
                bias = None if all(layer.bias is None for layer in layers) else torch.cat(
                    [layer.weight.new_zeros(layer.out_features) if layer.bias is None else layer.bias
                     for layer in layers])
            self._weight = torch.ops.mkldnn._reorder_linear_weight(weight) if pack else weight
            self._bias = bias
        self._key = key

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._layers[0].weight
        pack = (_packing and weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
                and x.dtype == weight.dtype and onednn_linear_available())
        self._refresh(pack)
        if pack:
            return torch.ops.mkldnn._linear_pointwise(
                x, self._weight, self._bias, "gelu" if self.gelu else "none", [], "none" if self.gelu else "")
        y = F.linear(x, self._weight, self._bias)
        return F.gelu(y) if self.gelu else y
