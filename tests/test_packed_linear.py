"""Packed Linear weights for sampling (models/packed_linear.py) compute what nn.Linear computes,
opt in around a block only, and fall back to F.linear where the CPU cannot pack a dtype."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models import cpu_kernels
from models.gpt import GPT, GPTConfig
from models.packed_linear import (
    PRECISIONS,
    FrozenLinear,
    bfloat16_libraries,
    bfloat16_library,
    cpu_vendor,
    float32_libraries,
    float32_library,
    matrix_library,
    onednn_linear_available,
    own_bfloat16_available,
    packed_linears,
    packing_supported,
    precision_supported,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_gpt(dtype=torch.float32) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval().to(dtype)


def test_this_torch_build_packs_fp32_weights_for_onednn():
    # the sampling speed (bench/sampling.py) rests on it; a build without oneDNN falls back to F.linear
    assert onednn_linear_available() and packing_supported(torch.float32)
    assert not packing_supported(torch.float16)


@pytest.mark.parametrize("rows", [1, 8, 37])
def test_packed_layers_equal_nn_linear_with_and_without_bias(rows):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 10, bias=False))
    x = torch.randn(2, rows, 24)
    with torch.no_grad():
        expected = model(x)
        with packed_linears(model):
            assert all("forward" in m.__dict__ for m in model if isinstance(m, nn.Linear))
            got = model(x)
    assert not any("forward" in m.__dict__ for m in model)  # the model is itself again outside the block
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_copy_follows_optimizer_steps_and_load_state_dict():
    torch.manual_seed(0)
    layer = nn.Linear(16, 16)
    x = torch.randn(4, 16)
    with torch.no_grad(), packed_linears(layer):
        before = layer(x)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(x).sum().backward()
    optimizer.step()  # in place: same storage, new version
    with torch.no_grad():
        plain = layer(x)
        with packed_linears(layer):
            after = layer(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, plain, rtol=1e-5, atol=1e-6)

    other = nn.Linear(16, 16)
    with torch.no_grad():
        other.weight.mul_(3)
        layer.load_state_dict(other.state_dict())
        with packed_linears(layer):
            torch.testing.assert_close(layer(x), other(x), rtol=1e-5, atol=1e-6)


def test_autograd_inside_the_block_keeps_plain_linear():
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with packed_linears(layer):
        layer(x).sum().backward()  # the packed op has no backward: F.linear is used
    assert layer.weight.grad is not None


def test_bf16_packs_only_where_the_cpu_runs_it():
    gpt = small_gpt(torch.bfloat16)
    idx = torch.randint(0, 37, (2, 5))
    with torch.inference_mode():
        plain, _ = gpt(idx)
        with packed_linears(gpt):
            packed, _ = gpt(idx)
    assert packed.dtype == torch.bfloat16
    torch.testing.assert_close(packed.float(), plain.float(), rtol=3e-2, atol=3e-2)
    assert packing_supported(torch.bfloat16) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_float32_products_use_own_kernels_else_mkl_on_intel_and_onednn_elsewhere():
    # MKL runs a generic one-thread kernel on AMD CPUs (half oneDNN's speed on Zen 4, bench/sampling.py)
    assert matrix_library() == ("mkl" if cpu_vendor() == "GenuineIntel" else "onednn")
    assert float32_library() == ("own" if cpu_kernels.available() else matrix_library())
    assert float32_library() in float32_libraries()
    assert FrozenLinear(torch.randn(4, 4), None).kind == float32_library()
    with pytest.raises(ValueError, match="library must be one of"):
        FrozenLinear(torch.randn(4, 4), None, library="openblas")


@pytest.mark.parametrize("library", float32_libraries())
@pytest.mark.parametrize("bias", [True, False])
def test_frozen_float32_linear_equals_nn_linear_with_gelu_and_residual(bias, library):
    torch.manual_seed(0)
    layer = nn.Linear(48, 80, bias=bias)
    x, residual = torch.randn(8, 48), torch.randn(8, 80)
    frozen = FrozenLinear(layer.weight, layer.bias, library=library)
    assert frozen.kind == library
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen(x, gelu=True), F.gelu(expected), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen(x, residual=residual), expected + residual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen(x, gelu=True, residual=residual), F.gelu(expected) + residual,
                                   rtol=1e-5, atol=1e-6)
        frozen.pack_for(8)  # MKL's copy for 8-row products; other row counts keep the plain weight
        torch.testing.assert_close(frozen(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(frozen(x[:3]), expected[:3], rtol=1e-5, atol=1e-6)


LOW_PRECISIONS = [("bfloat16", library) for library in bfloat16_libraries()] + \
    ([("int8", None)] if precision_supported("int8") else [])


@pytest.mark.parametrize("precision, library", LOW_PRECISIONS)
def test_frozen_low_precision_linears_are_close_to_float32(precision, library):
    torch.manual_seed(0)
    layer = nn.Linear(256, 512)
    x, residual = torch.randn(8, 256), torch.randn(8, 512)
    with torch.no_grad():
        expected = F.gelu(layer(x))
    frozen = FrozenLinear(layer.weight, layer.bias, precision, library)
    assert frozen.kind == (library or precision)
    for got, want in ((frozen(x, gelu=True), expected), (frozen(x, gelu=True, residual=residual), expected + residual),
                      (frozen(x[:3]), layer(x[:3]).detach())):
        assert got.dtype == torch.float32
        error = ((got - want).norm() / want.norm()).item()
        assert 0 < error < {"bfloat16": 0.01, "int8": 0.02}[precision], error
    if library == "own":  # only the weights rounded (oneDNN rounds the inputs and its output too)
        rounded = F.linear(x, layer.weight.bfloat16().float(), layer.bias.bfloat16().float())
        torch.testing.assert_close(frozen(x), rounded, rtol=1e-5, atol=1e-5)


def test_bfloat16_products_use_the_own_kernel_where_it_builds():
    assert own_bfloat16_available() == cpu_kernels.available()
    assert bfloat16_library() == ("own" if own_bfloat16_available() else
                                  "onednn" if packing_supported(torch.bfloat16) else "plain")
    assert precision_supported("bfloat16") == bool(bfloat16_libraries())
    if precision_supported("bfloat16"):
        assert FrozenLinear(torch.randn(4, 4), None, "bfloat16").kind == bfloat16_library()
    with pytest.raises(ValueError, match="no packed bfloat16 product in mkl"):
        FrozenLinear(torch.randn(4, 4), None, "bfloat16", library="mkl")


AVX2_ONLY = textwrap.dedent("""
    import warnings
    import torch
    from models.gpt import GPT, GPTConfig
    from models.inference import Decoder
    from models import cpu_kernels
    from models.packed_linear import bfloat16_library, packing_supported, precision_supported
    from models.sampling import generate
    from models.sampling_settings import SamplingSettings
    assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()   # oneDNN now sees an AVX2-only CPU
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.randn(8, 8).bfloat16())
        raise SystemExit("oneDNN packed a bf16 weight on an AVX2-only ISA")
    except RuntimeError as e:
        assert "bf16 path needs the cpu support" in str(e)     # the crash an AVX2 machine saw
    assert packing_supported(torch.float32) and not packing_supported(torch.bfloat16)
    own = cpu_kernels.available()                              # TAMING_CPU_KERNELS=0: the libraries only
    assert precision_supported("float32") and precision_supported("bfloat16") == own
    settings = SamplingSettings(top_k=5)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    prefix = torch.randint(0, 37, (2, 3))
    run = lambda **kw: generate(gpt, prefix, 8, settings, generator=torch.Generator().manual_seed(0), **kw)
    exact = run()
    if own:                                                    # the own kernel widens bf16 weights on AVX2
        assert cpu_kernels.load().isa == "AVX2" and bfloat16_library() == "own"
        assert run(precision="bfloat16").shape == (2, 8)
    else:
        try:
            Decoder(GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=1, n_head=2, n_embd=32)), "bfloat16")
            raise SystemExit("a bf16 Decoder was built on an AVX2-only ISA without the own kernels")
        except ValueError as e:
            assert "do not run natively" in str(e)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert torch.equal(run(precision="bfloat16"), exact)   # fell back to float32
        assert any("bfloat16 weights do not run natively" in str(w.message) for w in caught)
    assert run(precision="int8").shape == (2, 8)               # int8 where the engine runs it, else float32
    assert run(precision=None).shape == (2, 8)
    bf16 = generate(gpt.to(torch.bfloat16), prefix, 8, settings)  # bf16 on the own kernel, else float32
    assert bf16.shape == (2, 8)
    print("AVX2-OK", precision_supported("int8"))
""")


@pytest.mark.parametrize("own_kernels", ["1", "0"])
def test_sampling_on_an_avx2_only_cpu_falls_back_instead_of_crashing(own_kernels):
    """ONEDNN_MAX_CPU_ISA=AVX2 (with ATen and MKL limited alike) makes the libraries behave as on
    a CPU without AVX-512: the bf16 reorder refuses, exactly as it did on the AVX2-only machine.
    bf16 weights then run on the own AVX2 kernel; without it bf16 is not offered, and asking
    for it samples in float32 instead of crashing."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "MKL_ENABLE_INSTRUCTIONS": "AVX2", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1",
           "TAMING_CPU_KERNELS": own_kernels}
    done = subprocess.run([sys.executable, "-c", AVX2_ONLY], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "AVX2-OK" in done.stdout, done.stderr[-3000:]


def test_precisions_are_named_and_float32_always_runs():
    assert PRECISIONS == ("float32", "bfloat16", "int8")
    assert precision_supported("float32") and precision_supported("float32", "cuda")
    assert precision_supported("bfloat16") == bool(bfloat16_libraries())
    assert not precision_supported("int8", "cuda")


def test_a_model_that_has_sampled_can_be_deep_copied_and_saved(tmp_path):
    gpt = small_gpt()
    idx = torch.randint(0, 37, (2, 5))
    with torch.inference_mode(), packed_linears(gpt):
        before, _ = gpt(idx)  # packs every Linear
    twin = copy.deepcopy(gpt)
    torch.save(twin, tmp_path / "gpt.pt")
    with torch.no_grad():
        twin.head.weight.mul_(2)  # the copy packs its own weights, not the original's
        with packed_linears(gpt), packed_linears(twin):
            torch.testing.assert_close(gpt(idx)[0], before)
            assert not torch.allclose(twin(idx)[0], before)
