"""GPT: original parameter names, KV cache equal to full recomputation, loss, optimiser groups.
The sampling Decoder built from it is tested in test_inference.py."""
import pytest
import torch
from tiny_gpt import tiny_gpt

from models.gpt import GPTConfig


def test_state_dict_uses_the_original_names():
    gpt = tiny_gpt(n_layer=1)
    block = ["blocks.0.ln1.weight", "blocks.0.ln1.bias", "blocks.0.ln2.weight", "blocks.0.ln2.bias",
             "blocks.0.attn.mask"]
    block += [f"blocks.0.attn.{m}.{p}" for m in ("key", "query", "value", "proj") for p in ("weight", "bias")]
    block += [f"blocks.0.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    expected = {"tok_emb.weight", "pos_emb", "ln_f.weight", "ln_f.bias", "head.weight", *block}
    assert set(gpt.state_dict()) == expected
    assert gpt.state_dict()["blocks.0.attn.mask"].shape == (1, 1, 24, 24)


@pytest.mark.parametrize("n_unmasked", [0, 3])
def test_kv_cache_logits_equal_full_recompute(n_unmasked):
    gpt = tiny_gpt(n_unmasked=n_unmasked)
    idx = torch.randint(0, 37, (3, 20))
    with torch.no_grad():
        full, _ = gpt(idx)
        cache = gpt.new_cache(3, 20)
        # a prefix, then single tokens, then a chunk: every attention-mask case
        pieces = [idx[:, :5]] + [idx[:, t:t + 1] for t in range(5, 12)] + [idx[:, 12:20]]
        cached = torch.cat([gpt(piece, cache=cache)[0] for piece in pieces], dim=1)
    assert cache.pos == 20
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_cache_is_preallocated_and_filled_in_place():
    gpt = tiny_gpt()
    cache = gpt.new_cache(2, 10)
    storage = cache.kv.data_ptr()
    with torch.no_grad():
        gpt(torch.randint(0, 37, (2, 4)), cache=cache)
        gpt(torch.randint(0, 37, (2, 1)), cache=cache)
    assert cache.kv.data_ptr() == storage and cache.kv.shape == (2, 2, 2, 4, 10, 8)
    assert cache.pos == 5


def test_sequence_longer_than_cache_or_block_is_refused():
    gpt = tiny_gpt()
    cache = gpt.new_cache(1, 4)
    with torch.no_grad():
        gpt(torch.zeros(1, 4, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exhausted"):
            gpt(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exhausted"):
            gpt(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        gpt.new_cache(1, 25)


def test_loss_is_cross_entropy_and_gradients_reach_every_parameter():
    gpt = tiny_gpt()
    idx = torch.randint(0, 37, (2, 8))
    logits, loss = gpt(idx[:, :-1], targets=idx[:, 1:])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 37), idx[:, 1:].reshape(-1)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gpt.parameters())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(vocab_size=10, block_size=8, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0, block_size=8)


def test_optim_groups_decay_linear_weights_only():
    gpt = tiny_gpt(n_layer=1)
    decay, no_decay = gpt.optim_groups(0.1)
    names = {id(p): n for n, p in gpt.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        ["head.weight", "blocks.0.mlp.0.weight", "blocks.0.mlp.2.weight"]
        + [f"blocks.0.attn.{m}.weight" for m in ("key", "query", "value", "proj")])
    assert "pos_emb" in {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(gpt.parameters()))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
