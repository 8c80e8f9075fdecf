"""Samplers: top-k / top-p / temperature filters, determinism, KV cache vs. recomputation,
classifier-free guidance, sliding-window sampling."""
import copy

import pytest
import torch

from models.gpt import GPT, GPTConfig
from models.inference import Decoder
from models.packed_linear import PRECISIONS, precision_supported
from models.sampling import (
    filter_logits,
    generate,
    generate_sliding_window,
    generate_without_cache,
    guided_logits,
    sample_logits,
    window_start,
)
from models.sampling_settings import SamplingSettings as S


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=40, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # a peakier output distribution than the 0.02-std init gives
        model.head.weight.normal_(std=0.3)
    return model


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(4, 100)
    for k in (1, 7, 100):
        kept = torch.isfinite(filter_logits(logits, S(top_k=k)))
        assert kept.sum(dim=-1).tolist() == [k] * 4
        assert torch.equal(kept, logits >= logits.topk(k).values[:, -1:])


def test_top_p_keeps_the_smallest_set_with_mass_at_least_p():
    torch.manual_seed(1)
    logits = torch.randn(16, 60) * 2
    probs = logits.softmax(-1)
    for p in (0.05, 0.5, 0.9, 0.999):
        kept = torch.isfinite(filter_logits(logits, S(top_p=p)))
        for row in range(16):
            n = int(kept[row].sum())
            order = probs[row].argsort(descending=True)
            assert kept[row, order[:n]].all(), "the kept set must be the most likely tokens"
            assert probs[row, order[:n]].sum() >= p - 1e-6
            assert probs[row, order[:n - 1]].sum() < p, "one token fewer must not reach p"


def test_top_p_alone_with_temperature_and_top_k_together():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    # temperature flattens the distribution, so top-p needs more tokens
    assert torch.isfinite(filter_logits(logits, S(temperature=1.0, top_p=0.9))).sum() == 3
    assert torch.isfinite(filter_logits(logits, S(temperature=5.0, top_p=0.9))).sum() == 5
    # with top-k, top-p works on the renormalised k survivors (as the original)
    both = filter_logits(logits, S(top_k=2, top_p=0.7))
    p_top2 = torch.tensor([4.0, 3.0]).softmax(0)  # 0.73, 0.27 -> the best one alone holds >= 0.7
    assert p_top2[0] >= 0.7 and torch.isfinite(both).tolist() == [[True, False, False, False, False]]
    torch.testing.assert_close(filter_logits(logits, S(temperature=2.0)), logits / 2)


def test_sampled_tokens_come_from_the_filtered_set_and_greedy_is_argmax():
    torch.manual_seed(2)
    logits = torch.randn(8, 40)
    allowed = torch.isfinite(filter_logits(logits, S(top_k=10, top_p=0.8)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        token = sample_logits(logits, S(top_k=10, top_p=0.8), generator=generator)
        assert allowed.gather(1, token).all()
    assert torch.equal(sample_logits(logits, S(greedy=True)), logits.argmax(-1, keepdim=True))


def test_unfiltered_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    tokens = sample_logits(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens[:, 0], minlength=3) / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


def test_bad_settings_are_refused_when_made():
    for bad, key in ((dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=1.5), "top_p"),
                     (dict(temperature=0), "temperature"), (dict(temperature=1e-40), "temperature"),
                     (dict(temperature=float("inf")), "temperature"), (dict(guidance_scale=-1), "guidance_scale"),
                     (dict(precision="fp8"), "precision")):
        with pytest.raises(ValueError, match=key):
            S(**bad)


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if precision_supported(p)])
def test_the_settings_precision_is_the_decoders_unless_generate_is_told_otherwise(gpt, precision):
    gpt = copy.deepcopy(gpt)  # no Decoder built for it yet
    prefix = torch.randint(0, 50, (3, 2))
    draw = lambda settings, **kw: generate(gpt, prefix, 12, settings, generator=torch.Generator().manual_seed(1), **kw)
    from_settings = draw(S(top_k=20, precision=precision))
    assert set(Decoder._built[gpt]) == {(precision, None)}
    assert torch.equal(from_settings, draw(S(top_k=20), precision=precision))
    assert torch.equal(draw(S(top_k=20, precision=precision), precision="float32"), draw(S(top_k=20)))
    assert set(Decoder._built[gpt]) == {(precision, None), ("float32", None)}


def test_generation_is_deterministic_per_generator(gpt):
    prefix = torch.randint(0, 50, (3, 2))
    run = lambda seed: generate(gpt, prefix, 20, S(top_k=20, top_p=0.9),
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize("settings", [dict(greedy=True), dict(top_k=10), dict(top_p=0.9, temperature=0.8)])
def test_kv_cache_sampler_matches_full_recompute_sampler(gpt, settings):
    prefix = torch.randint(0, 50, (4, 3))
    kv = generate(gpt, prefix, 25, S(**settings), generator=torch.Generator().manual_seed(3))
    full = generate_without_cache(gpt, prefix, 25, S(**settings), generator=torch.Generator().manual_seed(3))
    assert kv.shape == (4, 25)
    assert torch.equal(kv, full)


def test_guidance_scale_one_equals_conditional_sampling(gpt):
    prefix = torch.tensor([[3, 11], [4, 12]])
    null = torch.tensor([[49, 11], [49, 12]])  # condition replaced by the null token
    for settings in (dict(greedy=True), dict(top_k=15, top_p=0.95)):
        conditional = generate(gpt, prefix, 16, S(**settings), generator=torch.Generator().manual_seed(5))
        guided = generate(gpt, prefix, 16, S(guidance_scale=1.0, **settings), uncond_prefix=null,
                          generator=torch.Generator().manual_seed(5))
        assert torch.equal(guided, conditional)
    strong = generate(gpt, prefix, 16, S(guidance_scale=4.0, greedy=True), uncond_prefix=null)
    assert not torch.equal(strong, generate(gpt, prefix, 16, S(greedy=True)))
    with pytest.raises(ValueError, match="needs uncond_prefix"):
        generate(gpt, prefix, 16, S(guidance_scale=4.0))


def test_guided_logits_formula():
    cond, uncond = torch.randn(2, 9), torch.randn(2, 9)
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))
    assert torch.equal(guided_logits(cond, uncond, 1.0), cond)


def test_window_start_is_the_original_scripts_crop():
    # scripts/sample_conditional.py, 16x16 windows: local = i if i <= 8,
    # 16 - (size - i) if size - i < 8, else 8; the window starts at i - local
    def original(i, size):
        local = i if i <= 8 else 16 - (size - i) if size - i < 8 else 8
        return i - local
    for size in (16, 17, 24, 40):
        assert [window_start(i, size, 16) for i in range(size)] == [original(i, size) for i in range(size)]


def test_sliding_window_on_the_training_grid_equals_plain_sampling(gpt):
    c = torch.randint(0, 50, (2, 4, 4))
    z = torch.zeros(2, 4, 4, dtype=torch.long)
    sliding = generate_sliding_window(gpt, c, z, (4, 4), S(greedy=True))
    plain = generate(gpt, c.reshape(2, -1), 16, S(greedy=True))
    assert torch.equal(sliding.reshape(2, -1), plain)


def test_sliding_window_samples_each_position_from_its_window(gpt):
    H, W, h, w = 6, 7, 4, 4
    c = torch.randint(0, 50, (2, H, W))
    z = generate_sliding_window(gpt, c, torch.zeros(2, H, W, dtype=torch.long), (h, w), S(greedy=True))
    # every token is the argmax given the condition crop and the crop's earlier tokens
    # (which are final when the token is drawn: they all precede it in raster order)
    for i in range(H):
        for j in range(W):
            i0, j0 = window_start(i, H, h), window_start(j, W, w)
            local = (i - i0) * w + (j - j0)
            seq = torch.cat((c[:, i0:i0 + h, j0:j0 + w].reshape(2, -1),
                             z[:, i0:i0 + h, j0:j0 + w].reshape(2, -1)[:, :local]), dim=1)
            with torch.no_grad():
                assert torch.equal(gpt(seq)[0][:, -1].argmax(-1), z[:, i, j])
    again = generate_sliding_window(gpt, c, z, (h, w), S(top_k=10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, generate_sliding_window(gpt, c, z, (h, w), S(top_k=10),
                                                      generator=torch.Generator().manual_seed(1)))


def test_sliding_window_with_a_class_prefix(gpt):
    z = generate_sliding_window(gpt, torch.tensor([[7], [9]]), torch.zeros(2, 5, 5, dtype=torch.long),
                                (4, 4), S(greedy=True))
    assert z.shape == (2, 5, 5) and not torch.equal(z[0], z[1])
