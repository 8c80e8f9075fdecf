"""The transformer of Taming Transformers: minGPT with the original parameter names.

The state_dict is key-for-key the one of taming/modules/transformer/mingpt.py
(`tok_emb`, `pos_emb`, `blocks.N.{ln1,ln2,attn.{key,query,value,proj,mask},mlp.0,mlp.2}`,
`ln_f`, `head`), so official checkpoints load unchanged. Two things differ:
attention runs through F.scaled_dot_product_attention, and generation can use a
preallocated key/value cache (`KVCache`) so each new token costs one position,
not a recomputation of the whole sequence. How the sampler speeds up the Linears
on the CPU is its own business (models/sampling.py, models/packed_linear.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    """Arguments of the original `taming.modules.transformer.mingpt.GPT`, same defaults."""
    vocab_size: int
    block_size: int
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 256
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    n_unmasked: int = 0  # the first n_unmasked positions attend to each other bidirectionally

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.n_unmasked <= self.block_size:
            raise ValueError(f"GPTConfig.n_unmasked must be in [0, block_size], got {self.n_unmasked}")


class KVCache:
    """Keys and values of every layer, allocated once for `max_len` positions and filled in place.

    `pos` is the number of positions already written; `GPT.forward(idx, cache=...)`
    appends idx's positions and advances it.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int,
                 device=None, dtype=torch.float32):
        if max_len > config.block_size:
            raise ValueError(f"KV cache of {max_len} positions exceeds block_size {config.block_size}")
        head_dim = config.n_embd // config.n_head
        self.kv = torch.empty(config.n_layer, 2, batch_size, config.n_head, max_len, head_dim,
                              device=device, dtype=dtype)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.kv.shape[-2]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_drop = nn.Dropout(config.resid_pdrop)
        self.n_head = config.n_head
        self.n_unmasked = config.n_unmasked
        # Kept as a persistent float buffer because the original checkpoints contain it.
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        mask[:config.n_unmasked, :config.n_unmasked] = 1
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, pos: int = 0) -> torch.Tensor:
        """x (B, T, C). With `kv` (2, B, nh, max_len, hs), this layer's slice of a KVCache,
        x's keys/values are written at [pos, pos+T) and attention spans [0, pos+T)."""
        B, T, C = x.shape
        q, k, v = (t(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (self.query, self.key, self.value))
        if kv is not None:
            kv[0, :, :, pos:pos + T] = k
            kv[1, :, :, pos:pos + T] = v
            k, v = kv[0, :, :, :pos + T], kv[1, :, :, :pos + T]
        attn_mask, is_causal = None, False
        if self.n_unmasked == 0 and pos == 0:
            is_causal = T > 1  # the plain causal case: SDPA's fast path
        elif not (self.n_unmasked == 0 and T == 1):  # one new token sees the whole cache
            attn_mask = self.mask[0, 0, pos:pos + T, :pos + T] > 0
        dropout = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(  # indices 0 and 2 carry weights, as in the original
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.resid_pdrop),
        )

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), kv, pos)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT over `vocab_size` tokens with a context of `block_size` positions."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.zeros_(module.bias)
            nn.init.ones_(module.weight)

    def get_block_size(self) -> int:
        return self.block_size

    def optim_groups(self, weight_decay: float = 0.01) -> list[dict]:
        """Parameter groups for AdamW as the original trains: weight decay on Linear
        weights only; none on biases, LayerNorm, embeddings and pos_emb."""
        decay = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for p in self.parameters() if id(p) not in decay_ids]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty key/value cache on this model's device and dtype."""
        return KVCache(self.config, batch_size, max_len or self.block_size,
                       device=self.pos_emb.device, dtype=self.pos_emb.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> (logits (B, T, vocab), cross-entropy loss if targets are given).

        With `cache`, idx continues the sequence the cache holds: its positions start
        at cache.pos, attention also sees the cached ones, and the cache advances by T.
        """
        T = idx.shape[1]
        pos = cache.pos if cache is not None else 0
        if pos + T > (cache.max_len if cache is not None else self.block_size):
            raise ValueError(f"cannot forward {pos + T} positions: block size / cache length exhausted")
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, pos:pos + T])
        for i, block in enumerate(self.blocks):
            x = block(x, cache.kv[i] if cache is not None else None, pos)
        x = self.ln_f(x)
        logits = self.head(x)
        if cache is not None:
            cache.pos += T
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
