"""Codebook quantizers for the VQGAN bottleneck, and a codebook-usage meter.

- VectorQuantizer: the original's VectorQuantizer2 (straight-through nearest code),
  `legacy` loss weighting, `remap` to a subset of used codes; optionally l2-normalised
  codes (cosine lookup, as ViT-VQGAN / LlamaGen; with a small `embed_dim` the VQGAN's
  quant_conv is the factorised low-dimensional projection).
- EMAVectorQuantizer: codebook as exponential moving averages of the assigned encoder
  outputs, with dead-code restart (the original's EMA quantizer cannot be constructed).
- GumbelQuantize: the original's Gumbel-softmax quantizer with a KL prior term.
- CodebookUsage: code counts over a whole evaluation pass -> usage and perplexity.

Every quantizer maps z (B, C, h, w) -> (z_q (B, C, h, w), loss, indices); indices are
(B, h, w) with `sane_index_shape`, else flat (B*h*w,) as in the original.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from models.files import open_regular


def read_code_list(path: str | Path, n_e: int) -> np.ndarray:
    """A `remap` .npy file: at most ``n_e`` code ids in one dimension. The path comes from a
    project YAML, so it must be a regular file (a FIFO would block for ever), and the
    array's shape is read from its header before its data (never unpickled)."""
    with open_regular(path) as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
        except ValueError as e:
            raise ValueError(f"{path}: not a .npy code list ({e})") from None
        _check_code_list(shape, n_e, f"{path}: ")
        if dtype.kind not in "iu":
            raise ValueError(f"{path}: code ids must be integers, got {dtype}")
        f.seek(0)
        return np.load(f, allow_pickle=False)


def _check_code_list(shape: tuple, n_e: int, where: str = "") -> None:
    if len(shape) != 1 or not 0 < shape[0] <= n_e:
        raise ValueError(f"{where}remap must list between 1 and n_embed={n_e} used codes, got shape {tuple(shape)}")


class _IndexRemap(nn.Module):
    """The original's `remap`: indices are renumbered to a subset `used` of the codebook
    (a .npy file of code ids, or a tensor); codes outside it become `unknown_index`
    ("random": a random used code, "extra": one extra index, or a fixed int)."""

    def _setup_remap(self, n_e: int, remap, unknown_index) -> None:
        self.remap = remap
        if remap is None:
            self.re_embed = n_e
            return
        if isinstance(remap, (str, Path)):
            remap = read_code_list(remap, n_e)
        _check_code_list(np.shape(remap), n_e)    # before a copy: a tensor may be an expanded view
        self.register_buffer("used", torch.as_tensor(np.asarray(remap)).long())
        self.re_embed = int(self.used.shape[0])
        self.unknown_index = unknown_index
        if unknown_index == "extra":
            self.unknown_index = self.re_embed
            self.re_embed += 1
        elif unknown_index != "random" and not isinstance(unknown_index, int):
            raise ValueError(f"unknown_index must be 'random', 'extra' or an int, got {unknown_index!r}")

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        shape = inds.shape
        inds = inds.reshape(shape[0], -1)
        match = inds[:, :, None] == self.used.to(inds)[None, None, :]
        new = match.long().argmax(-1)
        unknown = ~match.any(-1)
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=(int(unknown.sum()),), device=new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(shape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        inds = inds.clone()
        inds[inds >= self.used.shape[0]] = 0  # the "extra" index decodes as the first used code
        return self.used.to(inds)[inds]


class VectorQuantizer(_IndexRemap):
    """Nearest-code quantizer with straight-through gradients.

    legacy=True is the original's (and its checkpoints') loss, where beta weights the
    codebook term: mean((sg[z_q]-z)^2) + beta*mean((z_q-sg[z])^2). legacy=False is the
    VQ-VAE paper's: beta weights the commitment term instead.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, remap=None,
                 unknown_index="random", sane_index_shape: bool = False, legacy: bool = True,
                 l2_norm: bool = False):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.legacy, self.l2_norm, self.sane_index_shape = legacy, l2_norm, sane_index_shape
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)
        self._setup_remap(n_e, remap, unknown_index)

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_norm else w

    def nearest(self, z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        # ||z||^2 + ||e||^2 - 2 z.e, the original's formula (keeps argmin ties identical)
        d = (z_flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
             - 2 * z_flat @ codebook.t())
        return d.argmin(dim=1)

    def forward(self, z: torch.Tensor):
        # distances, codebook and its EMA statistics stay in the codebook's dtype (fp32)
        # under bf16/fp16 autocast: low-precision distances would pick wrong codes
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.to(self.embedding.weight.dtype))

    def _quantize(self, z: torch.Tensor):
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()  # B h w C: one vector per position
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        codebook = self.codebook()
        idx = self.nearest(z.view(-1, self.e_dim), codebook)
        z_q = codebook[idx].view(z.shape)
        loss = self.quantization_loss(z, z_q)
        if self.training:
            self.codebook_step(z.detach().view(-1, self.e_dim), idx)
        z_q = z + (z_q - z).detach()  # straight-through: decoder gradients reach the encoder
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, self._indices_out(idx, b, h, w)

    def quantization_loss(self, z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        commitment = torch.mean((z_q.detach() - z) ** 2)
        codebook = torch.mean((z_q - z.detach()) ** 2)
        if self.legacy:
            return commitment + self.beta * codebook
        return self.beta * commitment + codebook

    def codebook_step(self, z_flat: torch.Tensor, idx: torch.Tensor) -> None:
        """Training-time codebook update from this batch's assignments; here the codebook
        learns by gradient of the loss instead."""

    def _indices_out(self, idx: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        idx = idx.view(b, h, w)
        if self.remap is not None:
            idx = self.remap_to_used(idx)
        return idx if self.sane_index_shape else idx.reshape(-1)

    def get_codebook_entry(self, indices: torch.Tensor, shape) -> torch.Tensor:
        """indices (any layout, B*h*w in total) and shape (B, h, w, C) -> z_q (B, C, h, w)."""
        indices = indices.reshape(shape[0], -1)
        if self.remap is not None:
            indices = self.unmap_to_all(indices)
        z_q = self.codebook()[indices.reshape(-1)]
        return z_q.view(shape).permute(0, 3, 1, 2).contiguous()


class EMAVectorQuantizer(VectorQuantizer):
    """Codebook learned as EMAs of the encoder outputs assigned to each code (van den
    Oord et al. 2017, appendix) instead of by gradient; only the commitment term
    beta*mean((z - sg[z_q])^2) is returned as loss.

    A code whose EMA assignment count drops below `restart_threshold` is dead: it is
    restarted at a random encoder output of the current batch (so all codes start from
    data on the first step). Under torch.distributed the counts and sums are all-reduced
    and restarts are broadcast from rank 0, so every replica keeps the same codebook.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, restart_threshold: float = 0.1, remap=None,
                 unknown_index="random", sane_index_shape: bool = False):
        super().__init__(n_e, e_dim, beta=beta, remap=remap, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape)
        self.decay, self.eps, self.restart_threshold = decay, eps, restart_threshold
        self.embedding.weight.requires_grad_(False)
        self.register_buffer("cluster_size", torch.zeros(n_e))
        self.register_buffer("embed_avg", self.embedding.weight.detach().clone())

    def quantization_loss(self, z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.mean((z - z_q.detach()) ** 2)

    @torch.no_grad()
    def codebook_step(self, z_flat: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.n_e).to(self.cluster_size.dtype)
        sums = torch.zeros_like(self.embed_avg).index_add_(0, idx, z_flat.to(self.embed_avg.dtype))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing keeps rarely used codes from dividing by ~0
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.n_e * self.eps) * n
        self.embedding.weight.copy_(self.embed_avg / size[:, None])
        self.restart_dead_codes(z_flat)

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.restart_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = torch.randint(0, z_flat.shape[0], (n_dead,), device=z_flat.device)
        fresh = z_flat[pick].to(self.embed_avg.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(fresh, src=0)
        self.embedding.weight[dead] = fresh
        self.embed_avg[dead] = fresh  # as if each had been assigned once
        self.cluster_size[dead] = 1.0


class GumbelQuantize(_IndexRemap):
    """Gumbel-softmax quantizer (the original's, for GumbelVQ): logits over codes from a
    1x1 conv, z_q = softmax sample @ codebook, loss = kl_weight * KL(q || uniform).

    Training samples with temperature `temperature` (hard one-hot with straight-through
    gradients if `straight_through`). Eval takes the argmax code: the original still
    adds Gumbel noise at eval, which makes encoding random.
    """

    def __init__(self, num_hiddens: int, embedding_dim: int, n_embed: int,
                 straight_through: bool = True, kl_weight: float = 5e-4, temp_init: float = 1.0,
                 remap=None, unknown_index="random", sane_index_shape: bool = False):
        super().__init__()
        self.embedding_dim, self.n_embed = embedding_dim, n_embed
        self.straight_through, self.kl_weight = straight_through, kl_weight
        self.temperature = temp_init
        self.sane_index_shape = sane_index_shape
        self.proj = nn.Conv2d(num_hiddens, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embedding_dim)
        self._setup_remap(n_embed, remap, unknown_index)

    def forward(self, z: torch.Tensor, temp: float | None = None):
        logits = self.proj(z)
        if self.remap is not None:  # only the used codes compete
            logits = logits[:, self.used]
        if self.training:
            one_hot = F.gumbel_softmax(logits, tau=self.temperature if temp is None else temp,
                                       dim=1, hard=self.straight_through)
        else:
            one_hot = F.one_hot(logits.argmax(1), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        ind = one_hot.argmax(dim=1)  # (B, h, w), in the used subset's numbering when remapped
        if self.remap is not None:  # back to full codebook size, unused codes at zero
            full = torch.zeros(one_hot.shape[0], self.n_embed, *one_hot.shape[2:],
                               dtype=one_hot.dtype, device=one_hot.device)
            full[:, self.used] = one_hot
            one_hot = full
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, self.embed.weight)
        qy = F.softmax(logits, dim=1)
        loss = self.kl_weight * torch.sum(qy * torch.log(qy * self.n_embed + 1e-10), dim=1).mean()
        return z_q, loss, ind if self.sane_index_shape else ind.reshape(-1)

    def get_codebook_entry(self, indices: torch.Tensor, shape) -> torch.Tensor:
        b, h, w = shape[:3]
        indices = indices.reshape(b, h, w)
        if self.remap is not None:
            indices = self.unmap_to_all(indices)
        return self.embed.weight[indices].permute(0, 3, 1, 2).contiguous()


class CodebookUsage:
    """Accumulates code counts over a whole pass; `compute()` gives the fraction of
    codes used at least once and the perplexity exp(H(code distribution))."""

    def __init__(self, n_embed: int):
        self.n_embed = n_embed
        self.counts = torch.zeros(n_embed, dtype=torch.long)

    def update(self, indices: torch.Tensor) -> None:
        self.counts += torch.bincount(indices.detach().reshape(-1).cpu().long(), minlength=self.n_embed)

    def compute(self) -> dict[str, float]:
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("CodebookUsage.compute() before any update()")
        p = self.counts.double() / total
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        used = int((self.counts > 0).sum())
        return {"codebook_usage": used / self.n_embed, "codes_used": used,
                "perplexity": float(entropy.exp()), "tokens": total}
