"""The GPT for sampling only: the same network as models/gpt.py, its weights frozen once
for fast token-by-token inference.

Sampling feeds one token per sequence per step, so a step's time is the time to stream
every weight (and the key/value cache) through the processor once. `Decoder` computes
what `GPT.forward(idx, cache=...)` computes, with what that costs cut down:

- each block's query/key/value products are one product over the three weights side by
  side, and every product reads a copy of its weight packed once (FrozenLinear: the
  project's own kernels where they build, models/cpu_kernels.c, else in float32 MKL's
  packed sgemm on Intel CPUs and oneDNN's elsewhere, oneDNN's in bf16);
- one new token attends over the cache's filled positions read in place (no mask, no
  concatenation); with the own kernels, one call writes its key and value into the cache
  and attends (cpu_kernels.attend_step);
- weights may be bf16 or int8 where this machine runs them natively (precision_supported);
  float32 is the default and samples what the model samples. The cache is bf16 beside bf16
  weights where attention over it is fast (cache_dtype).

On CUDA the per-step launches, not the bytes, dominate at small batches: `CudaGraphStep`
records one step once and replays it. A recorded step cannot change shape, so it attends
over the whole cache with the positions not yet written masked, the position being a
tensor on the device (`Decoder.step_static`, which also runs, and is tested, on the CPU).

Layer norms, softmax and the residual stream stay float32 in every precision. The
Decoder holds a snapshot of the weights: `Decoder.for_model` builds a new one when a
parameter of the GPT changes (an optimizer step, load_state_dict, .to()).
"""
from __future__ import annotations

import functools
import weakref

import torch
from torch.nn import functional as F

from models import cpu_kernels
from models.gpt import GPT, KVCache
from models.packed_linear import FrozenLinear, cpu_has_amx, float32_library, precision_supported


def _float32(norm: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    return norm.weight.detach().float(), norm.bias.detach().float()


class _Block:
    """One transformer block's weights, frozen."""

    def __init__(self, block, precision: str, library: str | None):
        attn = block.attn
        qkv = [attn.query, attn.key, attn.value]
        frozen = functools.partial(FrozenLinear, precision=precision, library=library)
        self.qkv = frozen(torch.cat([m.weight for m in qkv]), torch.cat([m.bias for m in qkv]))
        self.proj = frozen(attn.proj.weight, attn.proj.bias)
        self.fc1 = frozen(block.mlp[0].weight, block.mlp[0].bias)
        self.fc2 = frozen(block.mlp[2].weight, block.mlp[2].bias)
        self.ln1 = _float32(block.ln1)
        self.ln2 = _float32(block.ln2)


def cache_dtype(precision: str, device_type: str, own_attention: bool = False) -> torch.dtype:
    """The dtype of the key/value cache beside weights at `precision`. A bf16 cache halves
    the bytes attention reads: bf16 beside bf16 weights on GPUs, with the own attention
    kernel (cpu_kernels.attend_step widens it in registers) and on AMX CPUs. Elsewhere on a
    CPU the cache stays float32: PyTorch's attention of one query over a bf16 cache takes
    2-3x as long as over float32 there (its flash kernel; Zen 4 with AVX512-BF16)."""
    if precision == "bfloat16" and (device_type != "cpu" or own_attention or cpu_has_amx()):
        return torch.bfloat16
    return torch.float32


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, nh, T, hs) over the cached k, v (B, nh, L, hs) -> float32 (B, nh, T, hs), in the
    cache's dtype; `allowed` (T, L), broadcastable, masks the rest."""
    return F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=allowed).float()


class Decoder:
    """`GPT` inference with frozen weights at `precision` ("float32", "bfloat16", "int8").

        decoder = Decoder.for_model(gpt)
        cache = decoder.new_cache(batch_size, max_len)
        logits = decoder(prefix, cache)          # (B, vocab) for the last position
        logits = decoder(token, cache)           # one more position, and so on

    A precision this machine does not run natively (precision_supported) is refused here;
    the sampler falls back to float32 before asking. `library` chooses the CPU library of the
    products: float32 "own", "mkl", "onednn" or "plain" (default packed_linear.float32_library),
    bfloat16 "own", "onednn" or "plain" (default packed_linear.bfloat16_library); with "own",
    one new position's attention over the cache is the own kernel too.
    """

    def __init__(self, gpt: GPT, precision: str = "float32", library: str | None = None):
        device = gpt.pos_emb.device
        if not precision_supported(precision, device.type):
            raise ValueError(f"{precision} weights do not run natively on this {device.type}")
        self.config, self.precision, self.device = gpt.config, precision, device
        self.n_head, self.n_embd = gpt.config.n_head, gpt.config.n_embd
        self.mask = gpt.blocks[0].attn.mask[0, 0] > 0  # (block_size, block_size): where attention may look
        self.tok_emb = gpt.tok_emb.weight.detach().float()
        self.pos_emb = gpt.pos_emb.detach()[0].float()
        self.blocks = [_Block(block, precision, library) for block in gpt.blocks]
        self.ln_f = _float32(gpt.ln_f)
        self.head = FrozenLinear(gpt.head.weight, None, precision, library)
        # one new position's attention over the cache (float32, or bf16 beside bf16 weights): the
        # own kernel where the float32 products use the own kernels (cpu_kernels.attend_step)
        own = device.type == "cpu" and (library or float32_library()) == "own"  # FrozenLinear checked it builds
        self.kernels = cpu_kernels.load() if own else None  # also the layer norms: F.layer_norm's threads cost more
        self.attend_step = self.kernels.attend_step if own else None

    _built: weakref.WeakKeyDictionary[GPT, dict[tuple, tuple[tuple, Decoder]]] = weakref.WeakKeyDictionary()

    @classmethod
    def for_model(cls, gpt: GPT, precision: str = "float32", library: str | None = None) -> Decoder:
        """The Decoder of `gpt` at `precision`, built once and rebuilt when a parameter changes."""
        weights = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in gpt.parameters())
        built, key = cls._built.setdefault(gpt, {}), (precision, library)
        if key not in built or built[key][0] != weights:
            built[key] = weights, cls(gpt, precision, library)
        return built[key][1]

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty key/value cache of `max_len` positions (block_size by default) for
        `batch_size` sequences in cache_dtype (bf16 with bf16 weights on GPUs, with the own
        attention kernel and on AMX CPUs, else float32); zeroed, since step_static reads the
        unwritten positions too (masked, but NaN * 0 is NaN). The products get ready for
        steps of batch_size rows."""
        own_attention = self.attend_step is not None
        dtype = cache_dtype(self.precision, self.device.type, own_attention)
        cache = KVCache(self.config, batch_size, max_len or self.config.block_size, device=self.device, dtype=dtype)
        cache.kv.zero_()
        for linear in self._linears():
            linear.pack_for(batch_size)  # the steps' products have batch_size rows
        return cache

    def _linears(self) -> list[FrozenLinear]:
        return [m for b in self.blocks for m in (b.qkv, b.proj, b.fc1, b.fc2)] + [self.head]

    def _layer_norm(self, x: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.kernels is not None:
            return self.kernels.layer_norm(x, *params)
        return F.layer_norm(x, (self.n_embd,), *params)

    def _blocks(self, x: torch.Tensor, cache: KVCache, attention) -> torch.Tensor:
        """x (B*T, C) through every block; attention(qkv, kv) takes the (B*T, 3C) queries, keys
        and values, writes the keys/values into the layer's cache kv and returns (B*T, C)."""
        for i, block in enumerate(self.blocks):
            y = attention(block.qkv(self._layer_norm(x, block.ln1)), cache.kv[i])
            x = block.proj(y, residual=x)
            x = block.fc2(block.fc1(self._layer_norm(x, block.ln2), gelu=True), residual=x)
        return x

    def _heads(self, qkv: torch.Tensor, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qkv (B*T, 3C) -> q, k, v, each (B, nh, T, hs)."""
        qkv = qkv.view(B, -1, 3, self.n_head, self.n_embd // self.n_head)
        return tuple(t.transpose(1, 2) for t in qkv.unbind(2))

    def _merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hs) -> (B*T, C)."""
        return y.transpose(1, 2).reshape(-1, self.n_embd)

    def __call__(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """idx (B, T) continues the sequences in `cache` -> logits (B, vocab) of its last position."""
        B, T = idx.shape
        pos = cache.pos
        if pos + T > cache.max_len:
            raise ValueError(f"cannot decode {pos + T} positions: the cache holds {cache.max_len}")

        one_pass = T == 1 and self.attend_step is not None and cache.max_len <= cpu_kernels.MAX_CACHE_LEN \
            and cache.kv.dtype in (torch.float32, torch.bfloat16)

        def attention(qkv, kv):
            if one_pass:
                return self.attend_step(qkv, kv, pos)  # writes the cache and attends in one pass
            q, k, v = self._heads(qkv, B)
            kv[0, :, :, pos:pos + T] = k
            kv[1, :, :, pos:pos + T] = v
            # one new token sees every cached position: no mask (as GPT.forward)
            allowed = None if T == 1 else self.mask[pos:pos + T, :pos + T]
            return self._merge_heads(attend(q, kv[0, :, :, :pos + T], kv[1, :, :, :pos + T], allowed))

        x = (F.embedding(idx, self.tok_emb) + self.pos_emb[pos:pos + T]).view(B * T, self.n_embd)
        x = self._blocks(x, cache, attention)
        cache.pos += T
        last = x.view(B, T, self.n_embd)[:, -1]
        return self.head(self._layer_norm(last, self.ln_f))

    def step_static(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per sequence, token (B, 1), at position `pos` (a 0-dim long tensor on the
        device) -> logits (B, vocab). Every shape is fixed and nothing reads `pos` on the host,
        so a CUDA graph can record it: the whole cache is read with positions > pos masked.
        cache.pos is left to the caller."""
        at = pos.view(1)
        positions = torch.arange(cache.max_len, device=pos.device)

        def attention(qkv, kv):
            q, k, v = self._heads(qkv, token.shape[0])
            kv[0].index_copy_(2, at, k.to(kv.dtype))
            kv[1].index_copy_(2, at, v.to(kv.dtype))
            return self._merge_heads(attend(q, kv[0], kv[1], (positions <= pos).view(1, -1)))

        x = F.embedding(token[:, 0], self.tok_emb) + self.pos_emb.index_select(0, at)
        x = self._blocks(x, cache, attention)
        return self.head(self._layer_norm(x, self.ln_f))


class CudaGraphStep:
    """`Decoder.step_static` recorded once as a CUDA graph for one cache, replayed per token:
    one launch instead of the ~15 kernels per layer the step issues.

        step = CudaGraphStep(decoder, cache)
        logits = step(token)   # writes position cache.pos and advances it

    The returned logits live in the graph's own buffer, overwritten by the next call.
    """

    def __init__(self, decoder: Decoder, cache: KVCache, warmup: int = 3):
        device = cache.kv.device
        self.cache = cache
        self.token = torch.zeros(cache.kv.shape[2], 1, dtype=torch.long, device=device)
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.pos.fill_(cache.pos)
        # warm up on a side stream (allocator, cuBLAS handles) before recording, as torch's docs do;
        # each call rewrites the cache at the same (unfilled) position, which the real step then overwrites
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                decoder.step_static(self.token, self.pos, cache)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decoder.step_static(self.token, self.pos, cache)

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        if self.cache.pos >= self.cache.max_len:
            raise ValueError(f"cannot decode {self.cache.pos + 1} positions: the cache holds {self.cache.max_len}")
        self.token.copy_(token)
        self.pos.fill_(self.cache.pos)
        self.graph.replay()
        self.cache.pos += 1
        return self.logits
