"""The sampling step's own CPU kernels (models/cpu_kernels.c): built with the real compiler,
they compute what F.linear and PyTorch's attention compute, for every row count and tail,
in each instruction set this CPU runs; the build is cached, atomic and safe to race, and
where it cannot be built sampling falls back to the libraries with a warning."""
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from models import cpu_kernels
from models.cpu_kernels import Kernels, KernelsUnavailable

REPO = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")
ISAS = ["AVX2"] + (["AVX512"] if torch.backends.cpu.get_cpu_capability() == "AVX512" else [])


def test_kernels_build_on_this_machine():
    # CI's machines are x86-64 with AVX2 and gcc: the fast path must be the one tested
    assert X86 and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    kernels = cpu_kernels.load()
    assert cpu_kernels.available() and kernels.isa == torch.backends.cpu.get_cpu_capability()
    assert kernels.path.parent == cpu_kernels.cache_dir() and kernels.path.suffix == ".so"


@pytest.fixture(scope="module", params=ISAS)
def kernels(request, tmp_path_factory) -> Kernels:
    return Kernels(cpu_kernels.build(request.param, tmp_path_factory.mktemp("kernels")), request.param)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 9, 17, 64])
@pytest.mark.parametrize("in_features, out_features", [(48, 80), (512, 1000), (2048, 24), (7, 33)])
def test_linear_equals_f_linear_for_every_row_count_and_tail(kernels, rows, in_features, out_features):
    torch.manual_seed(rows)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    x, residual = torch.randn(rows, in_features), torch.randn(rows, out_features)
    packed = kernels.pack_weight(weight)
    assert packed.shape == (-(-out_features // kernels.columns), in_features, kernels.columns)
    expected = F.linear(x, weight, bias)
    padded_bias = kernels.pack_bias(bias)
    tolerance = dict(rtol=1e-5, atol=1e-5 * in_features ** 0.5)
    torch.testing.assert_close(kernels.linear(x, packed, out_features, padded_bias), expected, **tolerance)
    torch.testing.assert_close(kernels.linear(x, packed, out_features), expected - bias, **tolerance)
    torch.testing.assert_close(kernels.linear(x, packed, out_features, None, residual), expected - bias + residual,
                               **tolerance)
    torch.testing.assert_close(kernels.linear(x, packed, out_features, padded_bias, residual), expected + residual,
                               **tolerance)
    # GELU joins in the same pass, before the residual (as the MLP's fc1 never has one, fc2 no GELU)
    torch.testing.assert_close(kernels.linear(x, packed, out_features, padded_bias, gelu=True), F.gelu(expected),
                               **tolerance)
    torch.testing.assert_close(kernels.linear(x, packed, out_features, padded_bias, residual, gelu=True),
                               F.gelu(expected) + residual, **tolerance)


def test_gelu_is_the_exact_erf_form_to_float32_accuracy(kernels):
    """The fused GELU (a rational erf) against float64's exact one, on a dense grid and at
    the edges: as close as torch's own float32 GELU, and inf/NaN go where they should."""
    x = torch.cat([torch.linspace(-12, 12, 240_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.4e38, float("inf"),
                                                                   -3.4e38])])
    identity = kernels.pack_weight(torch.ones(1, 1))
    y = kernels.linear(x[:, None], identity, 1, gelu=True)[:, 0]
    exact = F.gelu(x.double())
    grid = slice(0, 240_001)  # torch's own float32 GELU overflows at 3.4e38
    torch_error = (F.gelu(x[grid]).double() - exact[grid]).abs().max()
    assert (y.double() - exact)[exact.isfinite()].abs().max() <= 1.5e-6 and torch_error <= 1.5e-6
    assert y[-3] == 3.4e38 and y[-2] == float("inf") and y[-1] == 0  # -3.4e38 * 0: GELU's left tail is -0
    nan = kernels.linear(torch.tensor([[float("nan")]]), identity, 1, gelu=True)
    assert nan.isnan().all()


@pytest.mark.parametrize("rows, width", [(1, 512), (8, 512), (3, 7), (5, 40), (300, 512)])
def test_layer_norm_equals_f_layer_norm(kernels, rows, width):
    torch.manual_seed(rows + width)
    x = torch.randn(rows, width) * 3 + 1000  # far from zero: a one-pass variance would lose its digits here
    x[0] = 7.0  # a constant row: variance 0, normalised to the bias
    weight, bias = torch.randn(width), torch.randn(width)
    exact = F.layer_norm(x.double(), (width,), weight.double(), bias.double())
    error = (kernels.layer_norm(x, weight, bias).double() - exact).abs().max()
    torch_error = (F.layer_norm(x, (width,), weight, bias).double() - exact).abs().max()
    assert error <= 1.5 * torch_error + 1e-6, (error, torch_error)  # no worse than torch's float32 norm
    with pytest.raises(ValueError, match="layer norm of width"):
        kernels.layer_norm(x, weight[:-1], bias)


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 64])
@pytest.mark.parametrize("in_features, out_features", [(48, 80), (512, 1000), (7, 33)])
def test_bf16_weights_are_multiplied_in_float32(kernels, rows, in_features, out_features):
    """A bfloat16 panel holds the weights' top 16 bits; the kernel widens them exactly, so
    it computes F.linear with the bf16-rounded weight, inputs and sums in float32."""
    torch.manual_seed(rows)
    weight, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    x, residual = torch.randn(rows, in_features), torch.randn(rows, out_features)
    packed = kernels.pack_weight(weight, torch.bfloat16)
    assert packed.dtype == torch.bfloat16 and packed.shape == (-(-out_features // kernels.columns), in_features,
                                                               kernels.columns)
    expected = F.linear(x, weight.bfloat16().float(), bias)
    tolerance = dict(rtol=1e-5, atol=1e-5 * in_features ** 0.5)
    torch.testing.assert_close(kernels.linear(x, packed, out_features, kernels.pack_bias(bias), residual),
                               expected + residual, **tolerance)
    torch.testing.assert_close(kernels.linear(x, packed, out_features), expected - bias, **tolerance)
    with pytest.raises(ValueError, match="packs float32 or bfloat16"):
        kernels.pack_weight(weight, torch.float16)


def test_linear_reads_strided_and_half_inputs_as_float32(kernels):
    weight = torch.randn(40, 32)
    x = torch.randn(32, 6).t()  # not contiguous
    torch.testing.assert_close(kernels.linear(x, kernels.pack_weight(weight), 40), x @ weight.t(),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernels.linear(x.bfloat16(), kernels.pack_weight(weight), 40),
                               x.bfloat16().float() @ weight.t(), rtol=1e-5, atol=1e-5)


def test_linear_refuses_shapes_that_do_not_fit(kernels):
    """Bad shapes are refused with the mismatch named, never read past an array."""
    packed = kernels.pack_weight(torch.randn(40, 32))
    with pytest.raises(ValueError, match=r"x \(4, 31\) does not fit a weight of 32 inputs"):
        kernels.linear(torch.randn(4, 31), packed, 40)
    with pytest.raises(ValueError, match="is not pack_weight's panels"):
        kernels.linear(torch.randn(4, 32), packed, 40 + kernels.columns)
    with pytest.raises(ValueError, match="is not pack_weight's panels"):
        kernels.product(packed.double(), 40)
    product = kernels.product(packed, 40)  # checked once, then only x and the residual per call
    with pytest.raises(ValueError, match="does not fit"):
        product(torch.randn(4, 33))
    x = torch.randn(4, 32)
    assert torch.equal(product(x.double()), product(x))  # other dtypes are converted, not misread
    with pytest.raises(ValueError, match="residual"):
        kernels.linear(torch.randn(4, 32), packed, 40, residual=torch.randn(4, 39))
    with pytest.raises(ValueError, match="pack_bias"):
        kernels.linear(torch.randn(4, 32), packed, 40, bias=torch.randn(40))
    with pytest.raises(ValueError, match="2-d CPU tensor"):
        kernels.linear(torch.randn(4, 32, 1), packed, 40)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pos", [0, 1, 3, 4, 37, 63])
@pytest.mark.parametrize("D", [16, 24, 64, 12, 256])  # whole vectors, or not; up to 8 of them, or more
def test_attend_step_writes_the_cache_and_equals_sdpa(kernels, pos, D, dtype):
    B, H, L = 3, 4, 64
    torch.manual_seed(pos)
    cache = torch.randn(2, B, H, L, D).to(dtype)
    before = cache.clone()
    qkv = torch.randn(B, 3 * H * D)
    if dtype == torch.bfloat16:
        qkv[0, H * D] = float("nan")  # a NaN key stays NaN in bf16 (the rounding must not make it inf)
    out = kernels.attend_step(qkv, cache, pos)

    q, k, v = (t.transpose(1, 2) for t in qkv.view(B, 1, 3, H, D).unbind(2))  # (B, H, 1, D)
    expected_cache = before.clone()
    expected_cache[0, :, :, pos] = k[:, :, 0].to(dtype)  # bf16: rounded to nearest even, as torch rounds
    expected_cache[1, :, :, pos] = v[:, :, 0].to(dtype)
    torch.testing.assert_close(cache, expected_cache, rtol=0, atol=0, equal_nan=True)  # only position pos changed
    out = kernels.attend_step(qkv.nan_to_num(0.0), cache, pos)  # again, over finite keys
    expected_cache[0, :, :, pos] = k[:, :, 0].nan_to_num(0.0).to(dtype)
    keys, values = expected_cache[0, :, :, :pos + 1].float(), expected_cache[1, :, :, :pos + 1].float()
    expected = F.scaled_dot_product_attention(q.nan_to_num(0.0), keys, values)  # the cache widened: exact
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(B, H * D), rtol=1e-5, atol=1e-5)


def test_attend_step_refuses_what_does_not_fit(kernels):
    cache = torch.zeros(2, 2, 4, 8, 16)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.attend_step(torch.randn(2, 3 * 64), cache, 8)  # past the cache's end
    with pytest.raises(ValueError, match="does not fit"):
        kernels.attend_step(torch.randn(3, 3 * 64), cache, 0)  # another batch size
    with pytest.raises(ValueError, match="contiguous float32 or bfloat16"):
        kernels.attend_step(torch.randn(2, 3 * 64), cache.half(), 0)


def test_build_is_cached_by_source_flags_and_compiler(tmp_path):
    first = cpu_kernels.build("AVX2", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cpu_kernels.build("AVX2", tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    other = cpu_kernels.build("AVX512", tmp_path)
    assert other != first  # another ISA, another file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_a_build_prunes_old_versions_and_leftover_partials_only(tmp_path):
    def old(name: str, days: float) -> Path:
        path = tmp_path / name
        path.write_bytes(b"\0" * 64)
        stamp = time.time() - days * 86400
        os.utime(path, (stamp, stamp))
        return path

    stale_library = old("cpu_kernels-avx2-0123456789abcdef.so", days=40)
    recent_library = old("cpu_kernels-avx2-fedcba9876543210.so", days=3)
    killed_build = old(".cpu_kernels-avx2-0123456789abcdef.so.x1.partial", days=2)
    running_build = old(".cpu_kernels-avx2-0123456789abcdef.so.x2.partial", days=0)
    someone_elses = old("notes.txt", days=400)
    built = cpu_kernels.build("AVX2", tmp_path)
    assert not stale_library.exists() and not killed_build.exists()
    assert recent_library.exists() and running_build.exists() and someone_elses.exists() and built.exists()


def test_a_cache_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(KernelsUnavailable, match="writable by other users"):
        cpu_kernels.build("AVX2", shared)
    assert list(shared.iterdir()) == []  # nothing compiled, nothing loaded
    private = cpu_kernels.build("AVX2", tmp_path / "private")
    private.chmod(0o777)  # a library someone could have swapped
    with pytest.raises(KernelsUnavailable, match="writable by other users"):
        cpu_kernels.build("AVX2", tmp_path / "private")


def _python(code: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_two_processes_building_at_once_both_get_a_whole_library(tmp_path):
    code = """
        import torch
        from models import cpu_kernels
        k = cpu_kernels.load()
        w, x = torch.randn(100, 64), torch.randn(8, 64)
        assert torch.allclose(k.linear(x, k.pack_weight(w), 100), x @ w.t(), atol=1e-4)
        print(k.path)
    """
    env = {"TAMING_KERNEL_CACHE": str(tmp_path)}
    runs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env={**os.environ, **env},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and [p.name for p in tmp_path.iterdir()] == [Path(paths.pop()).name]  # no partials left


@pytest.mark.parametrize("compiler, reason", [("no-such-cc", "no C compiler 'no-such-cc' on PATH"),
                                              ("false", "could not compile cpu_kernels.c")])
def test_without_a_working_compiler_sampling_falls_back_to_the_libraries(tmp_path, compiler, reason):
    done = _python("""
        import warnings, torch
        from models import cpu_kernels
        from models.gpt import GPT, GPTConfig
        from models.packed_linear import float32_library, matrix_library
        from models.sampling import generate
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not cpu_kernels.available()
        print([str(w.message) for w in caught])
        assert float32_library() == matrix_library()
        gpt = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)).eval()
        print(generate(gpt, torch.zeros(2, 1, dtype=torch.long), 4).shape)
    """, {"CC": compiler, "TAMING_KERNEL_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert reason in done.stdout and "own CPU kernels unavailable" in done.stdout
    assert "torch.Size([2, 4])" in done.stdout
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind


def test_kernels_can_be_switched_off():
    done = _python("""
        from models import cpu_kernels
        from models.packed_linear import float32_library, matrix_library
        assert not cpu_kernels.available() and float32_library() == matrix_library()
    """, {"TAMING_CPU_KERNELS": "0"})
    assert done.returncode == 0, done.stderr
    assert "unavailable" not in done.stderr  # asked for, so no warning


def test_load_names_why_it_cannot_run(monkeypatch):
    monkeypatch.setenv("TAMING_CPU_KERNELS", "0")
    cpu_kernels.load.cache_clear()
    try:
        with pytest.raises(KernelsUnavailable, match="TAMING_CPU_KERNELS=0"):
            cpu_kernels.load()
    finally:
        cpu_kernels.load.cache_clear()
