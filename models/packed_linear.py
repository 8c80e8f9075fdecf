"""Linear layers for sampling, with each weight packed once for the CPU's matmul library.

Sampling feeds one token per sequence per step, so every Linear of the GPT is a
(batch x in) @ (in x out) product whose time is the time to read the weight. Reading a
copy of the weight reordered once for the library (oneDNN's blocked layout, MKL's packed
sgemm) streams it faster than F.linear, which lets MKL repack it on every call.

`FrozenLinear` is one such product for the sampling Decoder (models/inference.py), in
float32, bf16 or int8 as the CPU runs them natively (`precision_supported`). The
`packed_linears` context packs every nn.Linear of a model in place for a block of
full-sequence forwards (sliding-window sampling):

    with packed_linears(gpt):
        logits, _ = gpt(idx)

Inside the block each nn.Linear of the model computes through its packed copy, made on
first use and rebuilt when the weight changes (optimizer step, load_state_dict, .to());
outside it, the model is untouched. Layers on other devices, dtypes the CPU cannot run
in oneDNN (bf16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT) and anything under autograd
keep plain F.linear, so packing never changes what can run, only how fast.
"""
from __future__ import annotations

import contextlib
import functools
import platform
import warnings
import weakref
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from models import cpu_kernels
from models.sampling_settings import PRECISIONS


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


# ---- Frozen weights for the sampling step (models/inference.py) --------------------------------

@functools.cache
def precision_supported(precision: str, device_type: str = "cpu") -> bool:
    """Whether weights of ``precision`` run natively on this machine's ``device_type``:
    float32 everywhere; bfloat16 on a CPU where the own kernels build (AVX2 and up) or whose
    oneDNN packs it (AVX512-BF16/AMX, see packing_supported), or a CUDA GPU with bf16 units;
    int8 on a CPU whose quantized engine computes a dynamically quantised product (fbgemm or
    oneDNN: AVX2 and up), tried once."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return True
    if device_type == "cuda":
        return precision == "bfloat16" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    if precision == "bfloat16":
        return bool(bfloat16_libraries())
    try:
        FrozenLinear(torch.randn(8, 16), torch.zeros(8), "int8")(torch.randn(2, 16))
        return True
    except (RuntimeError, AttributeError):  # no quantized engine / op in this build or on this CPU
        return False


def _int8_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """weight (out, in) as qint8 with one symmetric scale per output channel."""
    scale = (weight.abs().amax(dim=1).double() / 127).clamp(min=1e-12)
    with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao, still the fast op here
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_channel(weight.float(), scale, torch.zeros_like(scale, dtype=torch.long),
                                          0, torch.qint8)


@functools.cache
def mkl_packed_linear_available() -> bool:
    """Whether this torch build has MKL's packed sgemm (the op Inductor's CPU freezing emits)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear") \
        and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


FLOAT32_LIBRARIES = ("own", "mkl", "onednn", "plain")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...), "" where it cannot be read."""
    if vendor := _cpuinfo().get("vendor_id"):
        return vendor
    processor = platform.processor()  # Windows: "Intel64 Family 6 ..., GenuineIntel"
    return next((v for v in ("GenuineIntel", "AuthenticAMD") if v in processor), "")


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles (Intel Sapphire Rapids and later), as Linux reports it."""
    return "amx_tile" in _cpuinfo().get("flags", "").split()


def float32_libraries() -> list[str]:
    """The libraries that can multiply float32 weights here ("plain" is F.linear, "own" the
    project's kernels, models/cpu_kernels.c)."""
    return ["plain"] + [name for name, ok in (("onednn", packing_supported(torch.float32)),
                                              ("mkl", mkl_packed_linear_available()),
                                              ("own", cpu_kernels.available())) if ok]


@functools.cache
def float32_library() -> str:
    """The library that multiplies float32 weights fastest at sampling's few rows on this CPU:
    the project's own kernels where they build (models/cpu_kernels.py: 1.4-1.7x oneDNN at 8
    rows on Zen 4, AVX-512 and AVX2 alike, and not slower up to 256 rows), else
    `matrix_library`. A fixed rule, not a timing, so that a seed samples the same tokens on
    every run on one machine."""
    return "own" if cpu_kernels.available() else matrix_library()


def own_bfloat16_available() -> bool:
    """Whether the own kernels multiply bfloat16 weights here: wherever they build (AVX2 and
    up), the weights widened to float32 in registers (models/cpu_kernels.c)."""
    return cpu_kernels.available()


def bfloat16_libraries() -> list[str]:
    """The libraries that multiply bfloat16 weights natively on this CPU."""
    return [name for name, ok in (("onednn", packing_supported(torch.bfloat16)),
                                  ("own", own_bfloat16_available())) if ok]


def bfloat16_library() -> str:
    """The library for bfloat16 weights on this CPU: the own kernel where it builds (it streams
    the weights faster than oneDNN's at sampling's few rows and runs on AVX2, README "Sampling
    speed"), else oneDNN's packed product (AVX512-BF16 or AMX), else F.linear ("plain")."""
    if own_bfloat16_available():
        return "own"
    return "onednn" if packing_supported(torch.bfloat16) else "plain"


def matrix_library() -> str:
    """The matrix library for float32 products at few rows on this CPU: MKL's packed sgemm on
    Intel (as fast as oneDNN with AVX-512, ~20 % faster with AVX2, a third of the cost per
    call), oneDNN elsewhere: on AMD, MKL runs a generic kernel on one thread and oneDNN's
    packed product is 2x faster (bench/sampling.py prints each)."""
    if mkl_packed_linear_available() and cpu_vendor() == "GenuineIntel":
        return "mkl"
    return "onednn" if packing_supported(torch.float32) else "plain"


class FrozenLinear:
    """One Linear's weight and bias, prepared once for inference at ``precision``; calls take
    and return float32 (rows, in) -> (rows, out), with GELU and a residual optionally added.

    - float32 on the CPU: the library `float32_library` picks for this CPU, or `library`.
      The own kernels read a copy packed in panels (cpu_kernels.pack_weight), GELU and the
      residual applied in the same pass; MKL's packed sgemm reorders the weight once for the row count
      the sampler steps with (pack_for), other row counts (a prompt) using the plain weight;
      oneDNN's and the own packed copies serve any row count (bench/sampling.py, README);
    - bfloat16 on the CPU: the own kernel where it builds (bfloat16_library: the weights
      widened to float32 in registers, inputs, sums and output float32), else oneDNN's packed
      product with AVX512-BF16 or AMX, GELU fused (inputs and output rounded to bfloat16);
    - int8 (CPU): quantised per output channel for the quantized engine, the activations
      quantised per call (7-bit, which AVX2 without VNNI cannot overflow);
    - anything else (CUDA, builds without MKL/oneDNN): F.linear on a copy in the dtype.

    Made from the weight as it is (packed copies do not follow it, a float32 weight may be
    shared): when the weight changes, make a new one, as models/inference.py does.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "float32",
                 library: str | None = None):
        if library is not None and library not in FLOAT32_LIBRARIES:
            raise ValueError(f"library must be one of {FLOAT32_LIBRARIES}, got {library!r}")
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        on_cpu = weight.device.type == "cpu"
        if precision == "int8":
            if not on_cpu:
                raise ValueError("int8 weights run on the CPU only")
            self.kind = "int8"
            self.packed = torch.ops.quantized.linear_prepack(_int8_per_channel(weight),
                                                             None if bias is None else bias.float())
            return
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.weight = weight.to(self.dtype).contiguous()
        self.bias = None if bias is None else bias.to(self.dtype)
        if on_cpu and self.dtype == torch.float32:
            self.kind = library or float32_library()
            if self.kind == "mkl" and not mkl_packed_linear_available() or \
                    self.kind == "onednn" and not packing_supported(torch.float32) or \
                    self.kind == "own" and not cpu_kernels.available():
                raise ValueError(f"no packed float32 product in {self.kind} here")
        elif on_cpu and self.dtype == torch.bfloat16:
            self.kind = library or bfloat16_library()
            if self.kind == "mkl" or self.kind == "onednn" and not packing_supported(torch.bfloat16) or \
                    self.kind == "own" and not own_bfloat16_available():
                raise ValueError(f"no packed bfloat16 product in {self.kind} here")
        else:
            self.kind = "plain"
        if self.kind == "mkl":
            self.rows, self.packed = None, None
        elif self.kind == "onednn":
            self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight)
        elif self.kind == "own":
            self.kernels = cpu_kernels.load()
            self.out_features = self.weight.shape[0]
            self.packed = self.kernels.pack_weight(self.weight, self.dtype)
            self.bias = None if bias is None else self.kernels.pack_bias(self.bias)
            self.product = self.kernels.product(self.packed, self.out_features, self.bias)
            self.weight = None  # the packed copy serves every row count

    def pack_for(self, rows: int) -> None:
        """Reorder the weight for products of `rows` rows (MKL packs per shape); the copy for
        the previous row count is dropped."""
        if self.kind == "mkl" and rows != self.rows:
            self.packed = None  # free the old copy first
            self.packed, self.rows = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows), rows

    def __call__(self, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "own":  # GELU and the residual join in the product's pass
            return self.product(x, residual, gelu)
        if self.kind == "onednn":
            y = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias,
                                                  "gelu" if gelu else "none", [], "none").float()
            gelu = False
        elif self.kind == "mkl" and x.shape[0] == self.rows:
            y = torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)
        elif self.kind == "int8":
            y = torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=True)
        else:
            y = F.linear(x.to(self.dtype), self.weight, self.bias).float()
        if gelu:
            y = F.gelu(y)
        return y if residual is None else y + residual
