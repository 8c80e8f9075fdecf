"""Quantizers: loss formulas, straight-through gradients, remap, EMA updates and
dead-code restart, Gumbel, and the codebook usage meter."""
import math

import numpy as np
import pytest
import torch

from models.quantize import CodebookUsage, EMAVectorQuantizer, GumbelQuantize, VectorQuantizer


def _z(b=2, c=4, h=3, w=3, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_nearest_code_and_legacy_loss_formulas():
    torch.manual_seed(0)
    for legacy in (True, False):
        vq = VectorQuantizer(8, 4, beta=0.25, legacy=legacy, sane_index_shape=True)
        z = _z()
        z_q, loss, idx = vq(z)
        flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
        expect_idx = torch.cdist(flat, vq.embedding.weight).argmin(1)
        assert idx.shape == (2, 3, 3) and torch.equal(idx.reshape(-1), expect_idx)
        codes = vq.embedding.weight[expect_idx]
        mse = torch.mean((codes - flat) ** 2)
        # both terms have the same value; only which side gets beta (its gradient) differs
        assert torch.allclose(loss, 1.25 * mse)
        assert torch.allclose(z_q.permute(0, 2, 3, 1).reshape(-1, 4), codes, atol=1e-6)
        # gradient of the loss w.r.t. the codebook: legacy scales the codebook term by beta
        vq.embedding.weight.grad = None
        loss.backward()
        g = vq.embedding.weight.grad
        ref = torch.zeros_like(g).index_add_(0, expect_idx, 2 * (codes - flat) / flat.numel())
        assert torch.allclose(g, (0.25 if legacy else 1.0) * ref, atol=1e-6)


def test_straight_through_gradient_reaches_encoder_output():
    vq = VectorQuantizer(8, 4)
    z = _z().requires_grad_(True)
    z_q, _, _ = vq(z)
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)  # identity through the quantizer


def test_sane_index_shape_and_flat_indices():
    z = _z()
    assert VectorQuantizer(8, 4)(z)[2].shape == (2 * 3 * 3,)
    assert VectorQuantizer(8, 4, sane_index_shape=True)(z)[2].shape == (2, 3, 3)


@pytest.mark.parametrize("unknown", ["extra", 1, "random"])
def test_remap_to_used_codes(tmp_path, unknown):
    torch.manual_seed(0)
    used = np.array([5, 2, 7])
    np.save(tmp_path / "used.npy", used)
    vq = VectorQuantizer(8, 4, remap=str(tmp_path / "used.npy"), unknown_index=unknown, sane_index_shape=True)
    plain = VectorQuantizer(8, 4, sane_index_shape=True)
    plain.load_state_dict({"embedding.weight": vq.embedding.weight.data})
    z = _z(b=4, h=4, w=4)
    raw = plain(z)[2]
    idx = vq(z)[2]
    for code, new in zip(raw.reshape(-1).tolist(), idx.reshape(-1).tolist()):
        if code in used:
            assert new == used.tolist().index(code)
        elif unknown == "extra":
            assert new == 3
        elif unknown == 1:
            assert new == 1
        else:
            assert 0 <= new < 3
    assert vq.re_embed == (4 if unknown == "extra" else 3)
    # used codes decode to themselves; the extra index decodes as the first used code
    back = vq.unmap_to_all(idx)
    known = torch.isin(raw, torch.as_tensor(used))
    assert torch.equal(back[known], raw[known])
    quant = vq.get_codebook_entry(idx, (4, 4, 4, 4))
    assert torch.equal(quant, vq.embedding.weight[back].permute(0, 3, 1, 2))


def test_l2_normalised_codes_use_cosine_lookup():
    vq = VectorQuantizer(16, 4, l2_norm=True, sane_index_shape=True)
    z = _z() * 10
    z_q, _, idx = vq(z)
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    flat = torch.nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, 4), dim=1)
    cos = flat @ torch.nn.functional.normalize(vq.embedding.weight, dim=1).t()
    assert torch.equal(idx.reshape(-1), cos.argmax(1))
    assert torch.allclose(vq.get_codebook_entry(idx, (2, 3, 3, 4)), z_q, atol=1e-6)


def test_ema_codebook_moves_toward_assigned_encodings_and_restarts_dead_codes():
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(4, 2, decay=0.5, restart_threshold=0.1, sane_index_shape=True)
    assert not vq.embedding.weight.requires_grad
    # two tight clusters; after the first step every code starts from data (all were dead)
    centers = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    def batch():
        pts = centers.repeat_interleave(8, 0) + 0.01 * torch.randn(16, 2)
        return pts.t().reshape(1, 2, 4, 4)
    vq.train()
    vq(batch())
    assert torch.all(vq.cluster_size > 0)
    codes_before = vq.embedding.weight.clone()
    z = batch()
    _, loss, idx = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for k in idx.unique().tolist():
        target = flat[idx.reshape(-1) == k].mean(0)
        # an EMA step shrinks the distance to the mean of the code's assignments
        assert (vq.embedding.weight[k] - target).norm() < (codes_before[k] - target).norm() + 1e-6
    # commitment loss only: beta * mean((z - sg[z_q])^2)
    zq_codes = codes_before[idx.reshape(-1)]
    assert torch.allclose(loss, 0.25 * torch.mean((flat - zq_codes) ** 2))
    # a code far from all data gets no assignments, decays below the threshold, restarts on data
    with torch.no_grad():
        vq.embedding.weight[3] = torch.tensor([100.0, 100.0])
        vq.cluster_size[3] = 1.0  # decays 0.5 per step: below 0.1 after 4 unused steps
        vq.embed_avg[3] = vq.embedding.weight[3]
    for _ in range(8):
        vq(batch())
    near = torch.cdist(vq.embedding.weight[3:4], centers).min()
    assert near < 0.5, vq.embedding.weight
    # eval mode never touches the codebook
    vq.eval()
    frozen = vq.embedding.weight.clone()
    vq(batch())
    assert torch.equal(vq.embedding.weight, frozen)


def test_gumbel_straight_through_gradients_and_deterministic_eval():
    torch.manual_seed(0)
    q = GumbelQuantize(4, 3, n_embed=8, straight_through=True, kl_weight=1e-2, sane_index_shape=True)
    z = _z().requires_grad_(True)
    q.train()
    z_q, loss, idx = q(z)
    # hard one-hot forward: every output vector is exactly one code
    assert torch.allclose(z_q.permute(0, 2, 3, 1), q.embed.weight[idx], atol=1e-6)
    z_q.pow(2).sum().backward()
    assert z.grad.abs().sum() > 0 and q.proj.weight.grad.abs().sum() > 0
    # KL(q || uniform) >= 0, = 0 for uniform logits
    assert loss.item() >= 0
    with torch.no_grad():
        q.proj.weight.zero_(); q.proj.bias.zero_()
    assert abs(q(z)[1].item()) < 1e-6
    q.eval()
    z2 = _z(seed=1)
    with torch.no_grad():
        q.proj.weight.normal_()
        a, b = q(z2)[2], q(z2)[2]
        assert torch.equal(a, b) and torch.equal(a, q.proj(z2).argmax(1))
        assert torch.equal(q.get_codebook_entry(a.reshape(-1), (2, 3, 3, 3)), q(z2)[0])


def test_codebook_usage_and_perplexity_over_a_pass():
    meter = CodebookUsage(8)
    with pytest.raises(ValueError):
        meter.compute()
    for _ in range(3):  # a uniform distribution over 4 of 8 codes, fed in batches
        meter.update(torch.tensor([[0, 1], [2, 3]]))
    out = meter.compute()
    assert out["codes_used"] == 4 and out["codebook_usage"] == 0.5 and out["tokens"] == 12
    assert math.isclose(out["perplexity"], 4.0, rel_tol=1e-9)
    meter.update(torch.full((36,), 7))  # skewed: 12 spread over 4 codes, 36 on one
    p = torch.tensor([3, 3, 3, 3, 36]) / 48.0
    assert math.isclose(meter.compute()["perplexity"], float(torch.exp(-(p * p.log()).sum())), rel_tol=1e-6)


def test_quantizers_work_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    vq, ema = VectorQuantizer(16, 4), EMAVectorQuantizer(16, 4)
    z = _z() * 3
    ref = vq(z)[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_low = torch.nn.functional.conv2d(z, torch.eye(4).view(4, 4, 1, 1))  # a bf16 activation
        assert z_low.dtype == torch.bfloat16
        z_q, loss, idx = vq(z_low)
        ema(z_low)
    assert z_q.dtype == torch.float32 and loss.dtype == torch.float32
    assert (idx == ref).float().mean() > 0.9  # same codes up to bf16 rounding of the input
    assert ema.embedding.weight.dtype == torch.float32 and torch.isfinite(ema.embedding.weight).all()
