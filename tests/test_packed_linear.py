"""The inference copies of Linear weights (models/packed_linear.py) compute what nn.Linear computes."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from models.packed_linear import PackedLinear, onednn_linear_available


def layers(*shapes, bias=True):
    torch.manual_seed(0)
    return [nn.Linear(i, o, bias=bias) for i, o in shapes]


def test_this_torch_build_packs_weights_for_onednn():
    # the sampling speed (bench/sampling.py) rests on it; a build without oneDNN falls back to F.linear
    assert onednn_linear_available()


@pytest.mark.parametrize("rows", [1, 8, 37])
def test_concatenated_layers_equal_their_separate_products(rows):
    q, k, v = layers((24, 16), (24, 16), (24, 8))
    x = torch.randn(rows, 24)
    with torch.no_grad():
        expected = torch.cat([q(x), k(x), v(x)], dim=-1)
        got = PackedLinear(q, k, v)(x)
    assert got.shape == (rows, 40)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_gelu_and_missing_bias_and_3d_input():
    up, = layers((32, 64))
    head, = layers((32, 10), bias=False)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(PackedLinear(up, gelu=True)(x), F.gelu(up(x)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(PackedLinear(head)(x), head(x), rtol=1e-5, atol=1e-6)
        mixed = PackedLinear(up, head)(x)  # a layer without bias next to one with
    torch.testing.assert_close(mixed, torch.cat([up(x), head(x)], -1).detach(), rtol=1e-5, atol=1e-6)


def test_the_copy_follows_optimizer_steps_load_state_dict_and_dtype_changes():
    layer, = layers((16, 16))
    packed = PackedLinear(layer)
    x = torch.randn(4, 16)
    with torch.no_grad():
        before = packed(x)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(x).sum().backward()
    optimizer.step()  # in place: same storage, new version
    with torch.no_grad():
        after = packed(x)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, layer(x), rtol=1e-5, atol=1e-6)

        other, = layers((16, 16))
        other.weight.mul_(3)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(packed(x), other(x), rtol=1e-5, atol=1e-6)

        layer.to(torch.bfloat16)  # new tensors of another dtype: packed again, in bf16
        xb = x.to(torch.bfloat16)
        got = packed(xb)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), layer(xb).float(), rtol=2e-2, atol=2e-2)


def test_a_model_that_has_sampled_can_be_deep_copied_and_saved(tmp_path):
    import copy

    from models.gpt import GPT, GPTConfig
    gpt = GPT(GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 37, (2, 5))
    with torch.inference_mode():
        before, _ = gpt(idx)  # packs every Linear
    twin = copy.deepcopy(gpt)
    torch.save(twin, tmp_path / "gpt.pt")
    with torch.no_grad():
        twin.head.weight.mul_(2)  # the copy packs its own weights, not the original's
        torch.testing.assert_close(gpt(idx)[0], before)
        assert not torch.allclose(twin(idx)[0], before)
