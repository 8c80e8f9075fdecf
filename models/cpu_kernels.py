"""The sampling step's own CPU kernels (models/cpu_kernels.c), built with the system's C
compiler at first use and loaded through ctypes.

At sampling's few rows a step's time is the time to read every weight, and the
libraries' kernels for such thin products (oneDNN, MKL) read them at about half the
memory's speed or less (bench/sampling.py; README "Sampling speed"). cpu_kernels.c reads
each weight from a copy packed once (`pack_weight`) with register tiles sized for the
instruction set (GELU fused), does the new position's attention over the cache in one
pass (`attend_step`) and normalises the step's few rows without waking torch's threads
(`layer_norm`).

The library is compiled once per machine for the instruction set ATen dispatches to
(torch.backends.cpu.get_cpu_capability(): AVX512 or AVX2, so ATEN_CPU_CAPABILITY=avx2
limits it too), into a cache folder keyed by the source, the flags and the compiler
($TAMING_KERNEL_CACHE, default ~/.cache/taming/kernels); the build goes to a temporary
file renamed into place, so two processes building at once both end with a whole library;
a build prunes libraries of other versions left unchanged for 30 days.
Where it cannot be built (no compiler, not x86-64, another ISA) or TAMING_CPU_KERNELS=0,
`available()` is False, with one warning naming the reason, and the sampler uses the
libraries instead: these kernels change how fast, never what can run.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
ISA_FLAGS = {"AVX2": ("-mavx2", "-mfma"),
             "AVX512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq")}
COMMON_FLAGS = ("-O3", "-fopenmp", "-fPIC", "-shared", "-std=c11")
MAX_CACHE_LEN = 16384  # attend_step keeps a row of scores on the thread's stack (64 KB at most)
STALE_LIBRARY_S = 30 * 86400  # another source version's library unchanged this long is pruned after a build
STALE_PARTIAL_S = 86400  # a build's temporary file this old was left by a killed process


class KernelsUnavailable(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why."""


def cache_dir() -> Path:
    if folder := os.environ.get("TAMING_KERNEL_CACHE"):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taming" / "kernels"


def _compiler() -> tuple[str, str]:
    """The C compiler ($CC, else cc) and the first line of its --version."""
    name = os.environ.get("CC", "cc")
    path = shutil.which(name)
    if path is None:
        raise KernelsUnavailable(f"no C compiler {name!r} on PATH (set CC, or install gcc)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return path, (version.stdout.splitlines() or ["?"])[0]


def build(isa: str, folder: Path | None = None) -> Path:
    """The library for `isa` ("AVX2", "AVX512"), compiled unless the cache has it."""
    compiler, version = _compiler()
    flags = (*ISA_FLAGS[isa], *COMMON_FLAGS)
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode()])).hexdigest()[:16]
    folder = folder or cache_dir()
    target = folder / f"cpu_kernels-{isa.lower()}-{key}.so"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_private(folder)
    if target.exists():
        _check_private(target)
        return target
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, "-o", partial, str(SOURCE)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise KernelsUnavailable(f"{compiler} could not compile {SOURCE.name} for {isa}:\n{done.stderr[-2000:]}")
        os.chmod(partial, 0o755)  # whatever the umask: _check_private must accept it next time
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    _prune(folder, keep=target)
    return target


def _prune(folder: Path, keep: Path) -> None:
    """Each change of the source, flags or compiler adds a library: after a build, drop the
    ones unchanged for STALE_LIBRARY_S (a checkout still on that version rebuilds in under a
    second; a process that loaded one keeps its mapping) and temporary files of killed builds."""
    now = time.time()
    for path in folder.iterdir():
        name = path.name
        if path == keep or not path.is_file() or path.is_symlink():
            continue
        if name.startswith("cpu_kernels-") and name.endswith(".so"):
            stale = STALE_LIBRARY_S
        elif name.startswith(".cpu_kernels-") and name.endswith(".partial"):
            stale = STALE_PARTIAL_S
        else:
            continue  # not ours
        try:
            if now - path.stat().st_mtime > stale:
                path.unlink()
        except OSError:
            pass  # another process pruned it first


def _check_private(path: Path) -> None:
    """Loading a library runs its code: refuse one that another user could have put there."""
    if os.name != "posix":
        return
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise KernelsUnavailable(f"{path} is writable by other users or not owned by this one: "
                                 f"not loading code from it (set TAMING_KERNEL_CACHE to a private folder)")


class Kernels:
    """The loaded library, on CPU tensors: `product`/`linear` (float32 or bfloat16 weights,
    float32 in and out, GELU optional), `attend_step` and `layer_norm`."""

    def __init__(self, path: Path, isa: str):
        self.path, self.isa = path, isa
        lib = ctypes.CDLL(str(path))
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        lib.linear.argtypes = [pointer] * 5 + [integer] * 5
        lib.attend_step.argtypes = [pointer] * 3 + [integer] * 6
        lib.layer_norm.argtypes = [pointer] * 4 + [integer] * 2 + [ctypes.c_float, integer]
        lib.linear.restype = lib.attend_step.restype = lib.layer_norm.restype = None
        lib.linear_bf16.argtypes, lib.linear_bf16.restype = lib.linear.argtypes, None
        lib.attend_step_bf16.argtypes, lib.attend_step_bf16.restype = lib.attend_step.argtypes, None
        self.rows, self.columns = lib.kernel_rows(), lib.kernel_columns()
        self._lib = lib

    def pack_weight(self, weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """weight (N, K) -> panels (ceil(N/NR), K, NR) in `dtype` (float32, or bfloat16: half
        the bytes, widened to float32 in registers), the last zero-padded."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"packs float32 or bfloat16 weights, not {dtype}")
        N, K = weight.shape
        panels = -(-N // self.columns)
        padded = weight.new_zeros(panels * self.columns, K, dtype=dtype)
        padded[:N] = weight
        return padded.view(panels, self.columns, K).transpose(1, 2).contiguous()

    def pack_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """bias (N) -> float32, zero-padded to whole panels (the kernel reads it a panel at a time)."""
        padded = bias.new_zeros(-(-bias.shape[0] // self.columns) * self.columns, dtype=torch.float32)
        padded[:bias.shape[0]] = bias
        return padded

    def product(self, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None) -> PackedProduct:
        """The product by one weight, as pack_weight and pack_bias made it, checked once here:
        a sampling step calls it with few rows, where per-call checks would cost as much as
        the kernel's arithmetic."""
        return PackedProduct(self, packed, out_features, bias)

    def linear(self, x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """x (M, K) @ weight^T + bias, through GELU if `gelu`, + residual -> (M, out_features):
        PackedProduct's call, for one product."""
        return self.product(packed, out_features, bias)(x, residual, gelu)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        """F.layer_norm of each row of x (M, C) with weight and bias (C), float32: mean, then
        the variance around it (to float32 rounding of F.layer_norm's result)."""
        x = _float32_contiguous(x, "x")
        M, C = x.shape
        if weight.shape != (C,) or bias.shape != (C,):
            raise ValueError(f"layer norm of width {C} got weight {tuple(weight.shape)} and bias {tuple(bias.shape)}")
        y = torch.empty_like(x)
        self._lib.layer_norm(x.data_ptr(), _pointer(weight), _pointer(bias), y.data_ptr(), M, C, eps,
                             torch.get_num_threads())
        return y

    def attend_step(self, qkv: torch.Tensor, cache: torch.Tensor, pos: int) -> torch.Tensor:
        """qkv (B, 3C) of one new position per sequence -> attention output (B, C); writes its
        key and value at `pos` of `cache` (2, B, H, L, D), which attention then reads 0..pos.
        A bfloat16 cache gets them rounded to nearest even (as .to(torch.bfloat16)) and is
        read widened to float32."""
        qkv = _float32_contiguous(qkv, "qkv")
        _, B, H, L, D = cache.shape
        if cache.dtype not in (torch.float32, torch.bfloat16) or not cache.is_contiguous() or \
                cache.device.type != "cpu":
            raise ValueError("the cache must be a contiguous float32 or bfloat16 CPU tensor")
        if qkv.shape != (B, 3 * H * D) or not 0 <= pos < L or L > MAX_CACHE_LEN:
            raise ValueError(f"qkv {tuple(qkv.shape)} at position {pos} does not fit cache {tuple(cache.shape)}")
        out = torch.empty(B, H * D)
        attend = self._lib.attend_step_bf16 if cache.dtype == torch.bfloat16 else self._lib.attend_step
        attend(qkv.data_ptr(), cache.data_ptr(), out.data_ptr(), B, H, L, D, pos, torch.get_num_threads())
        return out


class PackedProduct:
    """y (M, N) = x (M, K) @ weight^T + bias, through GELU if asked, + residual, float32 in and
    out, for a weight packed by Kernels.pack_weight (float32, or bfloat16 multiplied in
    float32) and a bias by pack_bias. GELU is the exact (erf) form, within 1.4e-6 of it.
    The weight and bias are checked once; each call checks x and the residual."""

    def __init__(self, kernels: Kernels, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None):
        columns = kernels.columns
        if packed.dim() != 3 or packed.shape[2] != columns or packed.shape[0] != -(-out_features // columns) or \
                packed.dtype not in (torch.float32, torch.bfloat16) or not packed.is_contiguous() or \
                packed.device.type != "cpu":
            raise ValueError(f"packed weight {tuple(packed.shape)} {packed.dtype} is not pack_weight's panels "
                             f"of {out_features} outputs")
        if bias is not None and bias.shape != (packed.shape[0] * columns,):
            raise ValueError(f"bias {tuple(bias.shape)} is not padded to the packed weight's panels (pack_bias)")
        self.packed, self.bias = packed, bias  # held: the kernel reads them through the pointers below
        self.in_features, self.out_features = packed.shape[1], out_features
        self._weight_at, self._bias_at = packed.data_ptr(), _pointer(bias)
        self._kernel = kernels._lib.linear_bf16 if packed.dtype == torch.bfloat16 else kernels._lib.linear

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        x = _float32_contiguous(x, "x")
        M, K = x.shape
        if K != self.in_features:
            raise ValueError(f"x ({M}, {K}) does not fit a weight of {self.in_features} inputs")
        y = torch.empty(M, self.out_features)
        if residual is not None:
            residual = _float32_contiguous(residual, "residual")
            if residual.shape != y.shape:
                raise ValueError(f"residual {tuple(residual.shape)} is not ({M}, {self.out_features})")
        self._kernel(x.data_ptr(), self._weight_at, self._bias_at, None if residual is None else residual.data_ptr(),
                     y.data_ptr(), M, K, self.out_features, int(gelu), torch.get_num_threads())
        return y


def _float32_contiguous(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype is torch.float32 and t.is_contiguous() and t.dim() == 2 and t.device.type == "cpu":
        return t  # the step's case, first: these checks run some hundred times a step
    if t.device.type != "cpu" or t.dim() != 2:
        raise ValueError(f"{name} must be a 2-d CPU tensor, got {tuple(t.shape)} on {t.device}")
    return t.float().contiguous()


def _pointer(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError("bias, residual and norm weights must be contiguous float32 CPU tensors")
    return t.data_ptr()


@functools.cache
def load() -> Kernels:
    """The kernels for this CPU, built on first call; KernelsUnavailable says why not."""
    if os.environ.get("TAMING_CPU_KERNELS", "1") == "0":
        raise KernelsUnavailable("TAMING_CPU_KERNELS=0")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise KernelsUnavailable(f"written for x86-64, this is {platform.machine()}")
    isa = torch.backends.cpu.get_cpu_capability()
    if isa not in ISA_FLAGS:
        raise KernelsUnavailable(f"needs AVX2 or AVX-512, ATen dispatches {isa} here")
    try:
        return Kernels(build(isa), isa)
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelsUnavailable(f"{type(error).__name__}: {error}") from error


@functools.cache
def available() -> bool:
    """Whether the kernels run here; warns once with the reason when not."""
    try:
        load()
        return True
    except KernelsUnavailable as why:
        if str(why) != "TAMING_CPU_KERNELS=0":
            warnings.warn(f"sampling uses the matrix libraries' kernels: own CPU kernels unavailable ({why})",
                          RuntimeWarning, stacklevel=2)
        return False
