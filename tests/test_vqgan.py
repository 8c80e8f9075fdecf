"""VQGAN architecture: the original's attention and resampling, shapes, the public
encode/decode API, Gumbel and segmentation variants."""
import pytest
import torch
import torch.nn.functional as F

from models.modules import AttnBlock, Downsample, Upsample
from models.vqgan import GumbelVQ, VQModel, VQSegmentationModel

DD = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
          ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)


def test_attention_equals_the_original_bmm_formulation():
    torch.manual_seed(0)
    attn = AttnBlock(32).eval()
    x = torch.randn(2, 32, 5, 4)
    h = attn.norm(x)
    q, k, v = attn.q(h), attn.k(h), attn.v(h)
    b, c, hh, ww = q.shape
    w_ = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c ** -0.5
    w_ = torch.softmax(w_, dim=2)
    out = torch.bmm(v.reshape(b, c, -1), w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
    assert torch.allclose(attn(x), x + attn.proj_out(out), atol=1e-5)


def test_downsample_pads_right_and_bottom_only_and_upsample_is_nearest_then_conv():
    torch.manual_seed(0)
    down = Downsample(32)
    x = torch.randn(1, 32, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), down.conv.weight, down.conv.bias, stride=2)
    assert down(x).shape == (1, 32, 4, 4) and torch.allclose(down(x), ref)
    assert torch.allclose(Downsample(32, with_conv=False)(x), F.avg_pool2d(x, 2))
    up = Upsample(32)
    assert torch.allclose(up(x), up.conv(x.repeat_interleave(2, 2).repeat_interleave(2, 3)))


def test_encode_decode_api_and_shapes():
    torch.manual_seed(0)
    vq = VQModel(DD, n_embed=32, embed_dim=4).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        quant, emb_loss, idx = vq.encode(x)
        assert quant.shape == (2, 4, 8, 8) and emb_loss.dim() == 0
        assert idx.shape == (2, 64) and idx.dtype == torch.int64
        xrec = vq.decode(quant)
        assert xrec.shape == x.shape
        assert torch.allclose(vq.decode_indices(idx, (8, 8)), xrec, atol=1e-5)  # z + (z_q - z) vs z_q: rounding
        assert torch.allclose(vq.decode_indices(idx.reshape(2, 8, 8), (8, 8)), xrec, atol=1e-5)
        assert torch.allclose(vq(x)[0], xrec, atol=1e-5)
    # state dict names are the original's (no aliases registered twice)
    keys = set(vq.state_dict())
    assert {"quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.weight",
            "encoder.down.1.block.0.nin_shortcut.weight", "decoder.up.1.attn.0.q.weight"} <= keys
    assert not any(k.startswith("loss.") or ".shortcut." in k for k in keys)


def test_gradients_reach_the_encoder_and_the_last_layer():
    torch.manual_seed(0)
    vq = VQModel(DD, n_embed=32, embed_dim=4)
    xrec, emb_loss, _ = vq(torch.rand(1, 3, 16, 16))
    (xrec.abs().mean() + emb_loss).backward()
    assert vq.get_last_layer() is vq.decoder.conv_out.weight and vq.get_last_layer().grad is not None
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert vq.quantize.embedding.weight.grad.abs().sum() > 0


def test_quantizer_options_and_errors():
    ema = VQModel(DD, 16, 4, quantizer="ema", restart_threshold=0.5)
    assert type(ema.quantize).__name__ == "EMAVectorQuantizer"
    l2 = VQModel(DD, 16, 4, l2_norm=True, legacy=False, beta=0.5)
    assert l2.quantize.l2_norm and not l2.quantize.legacy and l2.quantize.beta == 0.5
    with pytest.raises(ValueError, match="quantizer"):
        VQModel(DD, 16, 4, quantizer="fsq")
    with pytest.raises(ValueError, match="l2_norm"):
        VQModel(DD, 16, 4, quantizer="ema", l2_norm=True)


def test_gumbel_vq_roundtrip():
    torch.manual_seed(0)
    dd = {**DD, "z_channels": 4}
    m = GumbelVQ(dd, n_embed=16, embed_dim=4, kl_weight=1e-8,
                 temperature_scheduler_config={"target": "ignored"}).eval()
    assert "quantize.proj.weight" in m.state_dict() and "quantize.embed.weight" in m.state_dict()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        quant, _, idx = m.encode(x)
        assert idx.shape == (2, 64)
        assert torch.allclose(m.decode_indices(idx, (8, 8)), m.decode(quant), atol=1e-5)


def test_segmentation_model_colorizes_label_maps():
    torch.manual_seed(0)
    m = VQSegmentationModel(n_labels=5, ddconfig={**DD, "in_channels": 5, "out_ch": 5},
                            n_embed=16, embed_dim=4)
    assert m.colorize.shape == (3, 5, 1, 1) and "colorize" in m.state_dict()
    onehot = F.one_hot(torch.randint(0, 5, (1, 16, 16)), 5).permute(0, 3, 1, 2).float()
    _, _, idx = m.encode(onehot)
    rgb = m.to_rgb(onehot)
    assert idx.shape == (1, 64) and rgb.shape == (1, 3, 16, 16)
    assert rgb.min() == -1 and rgb.max() == 1


def test_norm_groups_changes_only_the_groupnorms():
    """ddconfig norm_groups (the demo's 8): every GroupNorm has that many groups, the weights
    are the same tensors as with the original's 32, and an image's mean colour reaches the
    first level's normalised features (with one channel per group it cannot)."""
    torch.manual_seed(0)
    original = VQModel(DD, n_embed=32, embed_dim=4)
    eight = VQModel({**DD, "norm_groups": 8}, n_embed=32, embed_dim=4)
    groups = {m.num_groups for m in eight.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8} and {m.num_groups for m in original.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
    assert {k: v.shape for k, v in eight.state_dict().items()} == {k: v.shape for k, v in original.state_dict().items()}
    eight.load_state_dict(original.state_dict())     # the same weights load either way

    block = original.encoder.down[0].block[0]        # 32 channels: one channel per group
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    tinted = x + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    with torch.no_grad():
        h, h_tinted = original.encoder.conv_in(x), original.encoder.conv_in(tinted)
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))   # away from the zero padding

        def change(norm):
            return (norm(h) - norm(h_tinted))[inner].abs().mean().item()
        # one channel per group: only the padded border's share of the statistics still sees the tint
        assert change(eight.encoder.down[0].block[0].norm1) > 5 * change(block.norm1)   # 8x here
