"""Net2NetTransformer: reproduction of the original on the reference D-RIN checkpoint,
the token-level API, pkeep, condition dropout, conditioning kinds, permuters."""
import os

import pytest
import torch
import torch.nn.functional as F

from models import load_pretrained
from models.conditioning import CoordStage, Labelator, SOSProvider
from models.gpt import GPT, GPTConfig
from models.net2net import Net2NetTransformer
from models.permuter import ZCurve
from models.sampling_settings import SamplingSettings as S
from models.vqgan import VQSegmentationModel


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def reference(reference_dir):
    folder = os.path.join(reference_dir, "taming_small")
    model = load_pretrained(os.path.join(folder, "drin_transformer"), strict=True)
    expected = torch.load(os.path.join(folder, "expected.pt"), weights_only=True)
    return model, expected


def test_reproduces_the_original_drin_transformer(reference):
    model, e = reference
    quant_z, z_indices = model.encode_to_z(e["image"])
    _, c_indices = model.encode_to_c(e["depth"])
    assert torch.equal(z_indices, e["z_indices"]) and torch.equal(c_indices, e["c_indices"])

    logits, target = model(e["image"], e["depth"])
    assert rel(logits, e["logits"]) < 1e-4
    assert torch.equal(target, e["target"])

    # prefix = c_indices + the first 3 image tokens, 61 greedy steps through the KV cache
    greedy = model.sample(z_indices[:, :3], c_indices, steps=61)
    assert torch.equal(greedy, e["greedy_indices"])
    assert rel(model.decode_to_img(greedy, quant_z.shape), e["greedy_image"]) < 1e-4


def test_token_level_model_without_vqgans_reproduces_the_same_tensors(reference):
    model, e = reference
    tokens_only = Net2NetTransformer.for_tokens(z_vocab=64, z_length=64, c_vocab=32, c_length=64,
                                                n_layer=2, n_head=4, n_embd=64).eval()
    tokens_only.transformer.load_state_dict(model.transformer.state_dict())  # vocab 64, block 128 alike
    assert tokens_only.first_stage_model is None and tokens_only.cond_stage_model is None

    logits, target = tokens_only.forward_indices(e["z_indices"], e["c_indices"])
    assert rel(logits, e["logits"]) < 1e-4 and torch.equal(target, e["target"])
    greedy = tokens_only.sample_indices(e["c_indices"], e["z_indices"][:, :3], steps=61, settings=S(greedy=True))
    assert torch.equal(greedy, e["greedy_indices"])
    with pytest.raises(RuntimeError, match="first_stage_model is not attached"):
        tokens_only.encode_to_z(e["image"])


def test_stages_stay_frozen_and_only_the_transformer_learns(reference):
    model, e = reference
    model.train()
    try:
        assert model.transformer.training
        assert not model.first_stage_model.training and not model.cond_stage_model.training
        logits, target = model(e["image"], e["depth"])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)).backward()
        assert all(p.grad is None for p in model.first_stage_model.parameters())
        assert all(p.grad is None for p in model.cond_stage_model.parameters())
        assert model.transformer.head.weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def small_model(**kwargs) -> Net2NetTransformer:
    torch.manual_seed(0)
    defaults = dict(z_vocab=40, z_length=16, c_vocab=20, c_length=4, n_layer=2, n_head=2, n_embd=32)
    defaults.update(kwargs)
    model = Net2NetTransformer.for_tokens(**defaults)
    with torch.no_grad():
        model.transformer.head.weight.normal_(std=0.3)
    return model.eval()


def test_pkeep_corrupts_inputs_in_training_but_never_the_target():
    model = small_model(pkeep=0.0)
    z, c = torch.randint(0, 40, (4, 16)), torch.randint(0, 20, (4, 4))
    clean, target = model.forward_indices(z, c)
    model.train()
    noisy, noisy_target = model.forward_indices(z, c)
    assert torch.equal(target, z) and torch.equal(noisy_target, z)
    # the first image token sees only the condition, which pkeep does not touch
    torch.testing.assert_close(noisy[:, 0], clean[:, 0])
    assert not torch.allclose(noisy[:, 1:], clean[:, 1:], atol=1e-3)


def test_condition_dropout_replaces_whole_conditions_by_the_null_token():
    model = small_model(c_vocab=21, cond_dropout=0.5, null_token=20)
    z, c = torch.randint(0, 40, (32, 16)), torch.randint(0, 20, (32, 4))
    conditional, _ = model.forward_indices(z, c)
    null, _ = model.forward_indices(z, torch.full_like(c, 20))
    model.train()
    torch.manual_seed(3)
    dropped_some, _ = model.forward_indices(z, c)
    is_null = torch.isclose(dropped_some, null, atol=1e-5).flatten(1).all(1)
    is_cond = torch.isclose(dropped_some, conditional, atol=1e-5).flatten(1).all(1)
    assert (is_null ^ is_cond).all() and 4 < is_null.sum() < 28


def test_classifier_free_guidance_scale_one_equals_conditional_sampling():
    model = small_model(c_vocab=11, c_length=1, null_token=10)
    labels = torch.tensor([[1], [7]])
    for settings in (dict(greedy=True), dict(top_k=12, top_p=0.9)):
        plain = model.sample_indices(labels, steps=16, settings=S(**settings), generator=torch.Generator().manual_seed(0))
        guided = model.sample_indices(labels, steps=16, settings=S(guidance_scale=1.0, **settings),
                                      generator=torch.Generator().manual_seed(0))
        assert torch.equal(plain, guided)
    guided = model.sample_indices(labels, steps=16, settings=S(guidance_scale=3.0, greedy=True))
    assert guided.shape == (2, 16) and not torch.equal(guided, model.sample_indices(labels, steps=16, settings=S(greedy=True)))
    with pytest.raises(ValueError, match="null_token"):
        small_model(c_length=1).sample_indices(labels, steps=4, settings=S(guidance_scale=2.0))


def test_sampling_is_deterministic_per_generator_and_continues_the_prefix():
    model = small_model()
    c, prefix = torch.randint(0, 20, (3, 4)), torch.randint(0, 40, (3, 5))
    run = lambda seed: model.sample_indices(c, prefix, steps=11, settings=S(top_k=10, top_p=0.9),
                                            generator=torch.Generator().manual_seed(seed))
    out = run(1)
    assert out.shape == (3, 16) and torch.equal(out[:, :5], prefix)
    assert torch.equal(out, run(1)) and not torch.equal(out, run(2))


def test_unconditional_model_starts_from_the_sos_token():
    model = small_model(unconditional=True, sos_token=39, c_length=1)
    assert isinstance(model.cond_stage_model, SOSProvider)
    z = torch.randint(0, 40, (2, 16))
    logits, _ = model.forward_indices(z)
    explicit, _ = model.transformer(torch.cat((torch.full((2, 1), 39), z[:, :-1]), 1))
    torch.testing.assert_close(logits, explicit)
    prefix = torch.randint(0, 40, (2, 3))  # the batch size comes from the prefix
    assert model.sample_indices(None, prefix, steps=13, settings=S(greedy=True)).shape == (2, 16)


def test_permuter_orders_training_and_sampling_and_returns_raster_tokens():
    model = small_model(permuter=ZCurve(4, 4))
    z, c = torch.randint(0, 40, (2, 16)), torch.randint(0, 20, (2, 4))
    _, target = model.forward_indices(z, c)
    assert torch.equal(target, z[:, model.permuter.forward_shuffle_idx])
    raster = model.sample_indices(c, steps=16, settings=S(greedy=True))
    in_sequence_order = model.sample(c.new_empty(2, 0), c, steps=16)
    assert torch.equal(raster, model.permuter(in_sequence_order, reverse=True))
    with pytest.raises(ValueError, match="orders 16 positions"):
        model.sample_indices(c, steps=10, settings=S(greedy=True))


def test_bad_tokens_are_refused_with_the_vocabulary_named():
    model = small_model()
    with pytest.raises(ValueError, match=r"z_indices .*vocabulary \[0, 40\)"):
        model.forward_indices(torch.full((1, 16), 40), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="c_indices are required"):
        model.forward_indices(torch.zeros(1, 16, dtype=torch.long))


def test_sliding_window_on_the_training_grid_equals_plain_sampling():
    model = small_model(c_length=16)
    c = torch.randint(0, 20, (2, 16))
    sliding = model.sample_indices_sliding(c, grid=(4, 4), window=(4, 4), settings=S(greedy=True))
    assert torch.equal(sliding, model.sample_indices(c, steps=16, settings=S(greedy=True)))
    larger = model.sample_indices_sliding(torch.randint(0, 20, (2, 36)), grid=(6, 6), window=(4, 4), settings=S(greedy=True))
    assert larger.shape == (2, 36)


def test_from_original_config_builds_class_conditional_models_with_a_permuter():
    params = {
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT",
                               "params": {"vocab_size": 64, "block_size": 17, "n_layer": 1, "n_head": 2,
                                          "n_embd": 16}},
        "permuter_config": {"target": "taming.modules.transformer.permuter.SpiralOut",
                            "params": {"H": 4, "W": 4}},
        "cond_stage_config": {"target": "taming.modules.util.Labelator", "params": {"n_classes": 10}},
        "cond_stage_key": "class_label", "ckpt_path": "does/not/exist.ckpt",
    }
    model = Net2NetTransformer.from_original_config(params)
    assert isinstance(model.cond_stage_model, Labelator) and model.cond_stage_key == "class_label"
    assert model.transformer.config.block_size == 17
    assert "permuter.forward_shuffle_idx" in model.state_dict()
    _, c = model.encode_to_c(torch.tensor([3, 9]))
    assert c.tolist() == [[3], [9]]
    unconditional = Net2NetTransformer.from_original_config(
        {**params, "cond_stage_config": "__is_unconditional__"})
    assert unconditional.be_unconditional and unconditional.cond_stage_key == "image"
    with pytest.raises(ValueError, match="unknown Net2NetTransformer parameter"):
        Net2NetTransformer.from_original_config({**params, "pkep": 0.5})
    with pytest.raises(ValueError, match="transformer_config.target"):
        Net2NetTransformer.from_original_config(
            {**params, "transformer_config": {"target": "taming.modules.transformer.mingpt.CodeGPT"}})


def test_segmentation_labels_become_one_hot_input_of_the_vq_segmentation_model():
    torch.manual_seed(0)
    ddconfig = dict(double_z=False, z_channels=8, resolution=16, in_channels=5, out_ch=5, ch=32,
                    ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    seg = VQSegmentationModel(n_labels=5, ddconfig=ddconfig, n_embed=16, embed_dim=4)
    model = Net2NetTransformer(GPT(GPTConfig(vocab_size=16, block_size=128, n_layer=1, n_head=1, n_embd=8)),
                               cond_stage_model=seg, cond_stage_key="segmentation").eval()
    labels = torch.randint(0, 5, (2, 16, 16))
    _, from_labels = model.encode_to_c(labels)
    _, from_one_hot = model.encode_to_c(F.one_hot(labels, 5).permute(0, 3, 1, 2).float())
    assert from_labels.shape == (2, 64) and torch.equal(from_labels, from_one_hot)


def test_coordinate_conditioning_and_downsample_cond_size():
    model = Net2NetTransformer(GPT(GPTConfig(vocab_size=20, block_size=32, n_layer=1, n_head=1, n_embd=8)),
                               cond_stage_model=CoordStage(n_embed=16, down_factor=2),
                               cond_stage_key="coord", downsample_cond_size=8).eval()
    rows = torch.linspace(0, 1, 32).view(1, 1, 32, 1).expand(2, 1, 32, 32)
    _, c = model.encode_to_c(rows)  # 32 -> 8 (downsample_cond_size) -> 4 (CoordStage)
    assert c.shape == (2, 16) and c.min() >= 0 and c.max() <= 16
    grid = c.view(2, 4, 4)
    assert (grid[:, 1:] >= grid[:, :-1]).all() and (grid == grid[:, :, :1]).all()  # values follow the rows
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode_to_c(rows * 2)
