"""VQGAN training loss: the original's formulas (adaptive weight, disc_start gating,
hinge/vanilla), the PatchGAN discriminator's layout, and LPIPS behaviour."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import read_state_dict
from models.discriminator import ActNorm, NLayerDiscriminator
from models.losses import VQLPIPSWithDiscriminator, hinge_d_loss, vanilla_d_loss
from models.lpips import LPIPS
from models.vqgan import VQModel

DD = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
          ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def _setup(disc_start=0, **kw):
    torch.manual_seed(0)
    vq = VQModel(DD, n_embed=16, embed_dim=4)
    loss = VQLPIPSWithDiscriminator(disc_start=disc_start, perceptual_weight=0.0, disc_ndf=8,
                                    disc_num_layers=2, disc_weight=0.8, **kw)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    return vq, loss, x


def test_adaptive_weight_matches_the_original_formula():
    vq, loss, x = _setup(codebook_weight=0.7)
    xrec, qloss, _ = vq(x)
    total, log = loss(qloss, x, xrec, optimizer_idx=0, global_step=5, last_layer=vq.get_last_layer())
    # recompute by hand: ||d nll/dW|| / (||d g/dW|| + 1e-4), clamped, times disc_weight
    nll = torch.abs(x - xrec).mean()
    g = -loss.discriminator(xrec).mean()
    W = vq.get_last_layer()
    gn = torch.autograd.grad(nll, W, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, W, retain_graph=True)[0].norm()
    d_weight = torch.clamp(gn / (gg + 1e-4), 0, 1e4) * 0.8
    assert torch.allclose(log["train/d_weight"], d_weight, rtol=1e-5)
    assert torch.allclose(total, nll + d_weight * g + 0.7 * qloss, rtol=1e-5)
    assert torch.allclose(log["train/g_loss"], g.detach())
    total.backward()  # the generator loss trains the autoencoder
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0


def test_disc_start_gates_both_gan_terms():
    vq, loss, x = _setup(disc_start=100)
    xrec, qloss, _ = vq(x)
    before, log = loss(qloss, x, xrec, 0, global_step=99, last_layer=vq.get_last_layer())
    assert log["train/disc_factor"] == 0 and log["train/d_weight"] == 0
    assert torch.allclose(before, torch.abs(x - xrec).mean() + qloss)
    d_before, _ = loss(qloss, x, xrec, 1, global_step=99)
    assert d_before.item() == 0
    after, log = loss(qloss, x, xrec, 0, global_step=100, last_layer=vq.get_last_layer())
    assert log["train/disc_factor"] == 1 and log["train/d_weight"] > 0
    assert not torch.allclose(after, before)
    d_after, dlog = loss(qloss, x, xrec, 1, global_step=100)
    logits_real, logits_fake = loss.discriminator(x), loss.discriminator(xrec.detach())
    assert torch.allclose(d_after, hinge_d_loss(logits_real, logits_fake))
    d_after.backward()  # the discriminator loss trains D only
    assert loss.discriminator.main[0].weight.grad.abs().sum() > 0
    assert vq.decoder.conv_out.weight.grad is None


def test_gan_loss_formulas_and_validation_without_graph():
    r, f = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    assert abs(hinge_d_loss(r, f).item() - 0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3)) < 1e-6
    assert torch.isclose(vanilla_d_loss(r, f), 0.5 * (F.softplus(-r).mean() + F.softplus(f).mean()))
    vq, loss, x = _setup(disc_loss="vanilla")
    loss.eval()
    with torch.no_grad():  # validation: no graph for the adaptive weight -> GAN term off
        xrec, qloss, _ = vq(x)
        total, log = loss(qloss, x, xrec, 0, global_step=10, last_layer=vq.get_last_layer(), split="val")
    assert log["val/d_weight"] == 0 and torch.allclose(total, torch.abs(x - xrec).mean() + qloss)
    loss.train()
    xrec, qloss, _ = vq(x)
    with pytest.raises(ValueError, match="last_layer"):
        loss(qloss, x, xrec, 0, global_step=10)
    with pytest.raises(ValueError, match="disc_loss"):
        VQLPIPSWithDiscriminator(0, perceptual_weight=0, disc_loss="wgan")


def test_perceptual_weight_zero_builds_no_lpips_and_needs_no_weights(tmp_path):
    # a fresh interpreter with no weights anywhere: nothing may be resolved or imported
    code = ("import sys; from models.losses import VQLPIPSWithDiscriminator as L\n"
            "m = L(disc_start=0, perceptual_weight=0.0)\n"
            "assert not hasattr(m, 'perceptual_loss')\n"
            "assert 'models.weights' not in sys.modules and 'torchvision' not in sys.modules\n")
    env = {**os.environ, "TAMING_WEIGHTS_DIR": str(tmp_path), "TAMING_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_lpips_random_weights_behaves_as_a_distance():
    torch.manual_seed(0)
    lp = LPIPS(pretrained=False)
    with torch.no_grad():  # the published heads are non-negative channel weights
        for i in range(5):
            getattr(lp, f"lin{i}").model[1].weight.abs_()
    lp.train()
    assert not lp.training and not lp.lin0.model[0].training  # dropout stays off
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert torch.allclose(lp(x, x), torch.zeros(2, 1, 1, 1))
    d = lp(x, y)
    assert d.shape == (2, 1, 1, 1) and torch.all(d > 0)
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lp.parameters())


def test_lpips_loads_weight_files_in_the_official_layouts(tmp_path):
    torch.manual_seed(1)
    src = LPIPS(pretrained=False)
    # torchvision's vgg16 file names convs features.N.* (slicing keeps N); vgg.pth names heads linK.model.1.*
    vgg = {f"features.{k}": v for i in range(1, 6) for k, v in getattr(src.net, f"slice{i}").state_dict().items()}
    assert "features.28.weight" in vgg
    vgg["classifier.0.weight"] = torch.zeros(1)  # present in the real file, unused
    heads = {k: v for k, v in src.state_dict().items() if k.startswith("lin")}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    lp = LPIPS(vgg_path=tmp_path / "vgg16.pth", heads_path=tmp_path / "vgg.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(lp.state_dict()[k], v), k


def test_discriminator_loads_the_reference_checkpoint_and_actnorm_initialises(reference_dir):
    sd, _ = read_state_dict(os.path.join(reference_dir, "taming_small/vqgan_image/checkpoints/last.ckpt"))
    disc = {k.removeprefix("loss.discriminator."): v for k, v in sd.items() if k.startswith("loss.discriminator.")}
    NLayerDiscriminator(3, ndf=16, n_layers=2).load_state_dict(disc)  # strict: the original's layout
    torch.manual_seed(0)
    d = NLayerDiscriminator(3, ndf=8, n_layers=2, use_actnorm=True)
    assert isinstance(d.main[3], ActNorm) and d.main[2].bias is not None
    x = torch.randn(4, 3, 32, 32)
    h = d.main[:3](x)
    out = d.main[3](h)
    assert d.main[3].initialized.item() == 1
    flat = out.transpose(0, 1).reshape(out.shape[1], -1)
    assert torch.allclose(flat.mean(1), torch.zeros(16), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(16), atol=1e-3)
    assert d(x).shape == (4, 1, 6, 6)
