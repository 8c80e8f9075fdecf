"""The sampling Decoder (models/inference.py) computes what GPT.forward computes: logits at
every position, through its own cache, in the eager and the static (CUDA-graph) step; lower
precisions stay close to float32; the frozen weights follow the model's."""
import pytest
import torch
from tiny_gpt import tiny_gpt

from models.inference import Decoder, cache_dtype
from models.packed_linear import PRECISIONS, bfloat16_libraries, cpu_has_amx, float32_libraries, precision_supported

NATIVE = [p for p in PRECISIONS if precision_supported(p)]


def decode_every_position(decoder: Decoder, idx: torch.Tensor, first: int) -> torch.Tensor:
    """Logits for positions first-1 .. end: a prefix of `first` tokens, then one token at a time."""
    cache = decoder.new_cache(idx.shape[0], idx.shape[1])
    out = [decoder(idx[:, :first], cache)]
    out += [decoder(idx[:, t:t + 1], cache) for t in range(first, idx.shape[1])]
    assert cache.pos == idx.shape[1]
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("library", float32_libraries())
@pytest.mark.parametrize("n_unmasked", [0, 3])
def test_decoder_logits_equal_the_models_forward_at_every_position(n_unmasked, library):
    gpt = tiny_gpt(n_unmasked=n_unmasked)
    idx = torch.randint(0, 37, (3, 20))
    with torch.inference_mode():
        full, _ = gpt(idx)
        got = decode_every_position(Decoder(gpt, library=library), idx, first=5)
    torch.testing.assert_close(got, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_a_chunk_after_single_tokens_uses_the_causal_mask():
    gpt = tiny_gpt(n_unmasked=3)
    idx = torch.randint(0, 37, (2, 16))
    decoder = Decoder(gpt)
    with torch.inference_mode():
        full, _ = gpt(idx)
        cache = decoder.new_cache(2, 16)
        decoder(idx[:, :2], cache)
        decoder(idx[:, 2:3], cache)
        chunk = decoder(idx[:, 3:16], cache)  # 13 positions at once, each seeing only the earlier ones
    torch.testing.assert_close(chunk, full[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cache holds 16"):
        decoder(idx[:, :1], cache)


def test_static_step_for_cuda_graphs_equals_the_eager_step():
    """step_static reads the whole cache with later positions masked and takes the position
    as a tensor (what a recorded CUDA graph needs): same logits as the eager step, on the CPU."""
    gpt = tiny_gpt()
    idx = torch.randint(0, 37, (3, 20))
    decoder = Decoder(gpt)
    with torch.inference_mode():
        full, _ = gpt(idx)
        cache = decoder.new_cache(3, 20)
        decoder(idx[:, :5], cache)
        static = [decoder.step_static(idx[:, t:t + 1], torch.tensor(t), cache) for t in range(5, 20)]
    torch.testing.assert_close(torch.stack(static, dim=1), full[:, 5:], rtol=1e-5, atol=1e-5)


LOW = [("bfloat16", library) for library in bfloat16_libraries()] + ([("int8", None)] if "int8" in NATIVE else [])


@pytest.mark.parametrize("precision, library", LOW)
def test_lower_precisions_stay_close_to_float32(precision, library):
    gpt = tiny_gpt(n_embd=64, n_head=4)
    idx = torch.randint(0, 37, (4, 20))
    with torch.inference_mode():
        exact = decode_every_position(Decoder(gpt), idx, first=3)
        low = decode_every_position(Decoder(gpt, precision, library), idx, first=3)
    assert low.dtype == torch.float32
    error = (low - exact).abs().max() / exact.abs().max()
    assert 0 < error < {"bfloat16": 0.01, "int8": 0.03}[precision], f"{precision}: max error {error:.4f} of the largest logit"
    agree = (low.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agree > 0.9


def test_bf16_weights_get_a_bf16_cache_where_attention_over_it_is_fast():
    # PyTorch's CPU attention over a bf16 cache is 2-3x slower than over float32 without AMX;
    # the own kernel widens it in registers (cache_dtype)
    amx = torch.bfloat16 if cpu_has_amx() else torch.float32
    assert cache_dtype("bfloat16", "cpu") == amx
    assert cache_dtype("bfloat16", "cpu", own_attention=True) == torch.bfloat16
    assert cache_dtype("bfloat16", "cuda") == torch.bfloat16 and cache_dtype("int8", "cpu") == torch.float32
    assert Decoder(tiny_gpt()).new_cache(2, 8).kv.dtype == torch.float32
    for library in bfloat16_libraries():
        decoder = Decoder(tiny_gpt(), "bfloat16", library)
        assert (decoder.attend_step is not None) == (library == "own")
        assert decoder.new_cache(2, 8).kv.dtype == (torch.bfloat16 if library == "own" else amx)


def test_this_cpu_runs_float32_and_refuses_unknown_precisions():
    assert NATIVE[0] == "float32"
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_supported("fp8")


def test_the_decoder_is_built_once_and_rebuilt_when_the_weights_change():
    gpt = tiny_gpt()
    idx = torch.randint(0, 37, (2, 6))
    first = Decoder.for_model(gpt)
    assert Decoder.for_model(gpt) is first
    optimizer = torch.optim.SGD(gpt.parameters(), lr=0.5)
    gpt(idx, targets=idx)[1].backward()
    optimizer.step()  # in place: new versions, same storage
    rebuilt = Decoder.for_model(gpt)
    assert rebuilt is not first
    with torch.inference_mode():
        full, _ = gpt(idx)
        cache = rebuilt.new_cache(2, 6)
        torch.testing.assert_close(rebuilt(idx, cache), full[:, -1], rtol=1e-5, atol=1e-5)
    other = tiny_gpt()
    with torch.no_grad():
        other.head.weight.mul_(2)
    gpt.load_state_dict(other.state_dict())
    assert Decoder.for_model(gpt) is not rebuilt


def test_a_bfloat16_model_decodes_in_float32_when_asked():
    gpt = tiny_gpt().to(torch.bfloat16)
    idx = torch.randint(0, 37, (2, 8))
    with torch.inference_mode():
        reference, _ = tiny_gpt().to(torch.bfloat16).float()(idx)  # the same bf16 weights, computed in float32
        got = decode_every_position(Decoder(gpt, "float32"), idx, first=8)
    torch.testing.assert_close(got[:, 0], reference[:, -1], rtol=1e-5, atol=1e-5)
