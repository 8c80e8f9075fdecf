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

from models.gpt import GPT, GPTConfig
from models.packed_linear import onednn_linear_available, packed_linears, packing_supported

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


AVX2_ONLY = textwrap.dedent("""
    import torch
    from models.gpt import GPT, GPTConfig
    from models.packed_linear import packing_supported
    from models.sampling import generate
    from models.sampling_settings import SamplingSettings
    assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()   # oneDNN now sees an AVX2-only CPU
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.randn(8, 8).bfloat16())
        raise SystemExit("oneDNN packed a bf16 weight on an AVX2-only ISA")
    except RuntimeError as e:
        assert "bf16 path needs the cpu support" in str(e)     # the crash an AVX2 machine saw
    assert packing_supported(torch.float32) and not packing_supported(torch.bfloat16)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        gpt = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval().to(dtype)
        out = generate(gpt, torch.randint(0, 37, (2, 3)), 8, SamplingSettings(top_k=5),
                       generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 8)
    print("AVX2-OK")
""")


def test_sampling_a_bf16_model_on_an_avx2_only_cpu_falls_back_instead_of_crashing():
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN behave as on a CPU without AVX-512: the bf16
    reorder refuses, exactly as it did on the AVX2-only machine, and sampling must not crash."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", AVX2_ONLY], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "AVX2-OK" in done.stdout, done.stderr[-3000:]


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
