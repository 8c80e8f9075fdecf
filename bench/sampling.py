"""KV-cache sampling vs. recomputing the whole sequence each step, on the CPU.

The issue's setting: a 16x16 token grid (256 tokens after one class token), batch 8,
GPT 8 layers x 512 wide x 8 heads, vocab 1024, top-k 100 and top-p 0.95. Both
samplers run in the same process, the full-recompute run between KV-cache runs, so
a machine that gets busier or quieter shows in the spread. The full-recompute run
takes minutes on 2 cores (it is quadratic in the sequence length). A last run repeats
the KV-cache sampler with plain F.linear, to show what packing the weights for oneDNN
(models/packed_linear.py) is worth.

    .venv/bin/python bench/sampling.py [--threads 2] [--repeats 2] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import functools
import time

import torch

from models.gpt import GPT, GPTConfig
from models.sampling import generate, generate_without_cache
from models.sampling_settings import SamplingSettings

SETTINGS = SamplingSettings(top_k=100, top_p=0.95)


def tokens_per_second(sampler, gpt, prefix, steps, seed) -> float:
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    sampler(gpt, prefix, steps, SETTINGS, generator=generator)
    elapsed = time.perf_counter() - start
    return prefix.shape[0] * steps / elapsed  # generated tokens only, not the prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2,
                        help="KV-cache runs before and after the (slow) full-recompute run; best is reported")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--grid", type=int, default=16, help="side of the token grid")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="weights and cache dtype (bfloat16 halves the bytes streamed per step; "
                             "CPUs with AVX512-BF16 run it natively)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = args.grid * args.grid
    gpt = GPT(GPTConfig(vocab_size=1024, block_size=steps + 1, n_layer=8, n_head=8, n_embd=512)).eval()
    gpt.to(getattr(torch, args.dtype))
    prefix = torch.randint(0, 1000, (args.batch, 1))  # one class token per sample
    n_params = sum(p.numel() for p in gpt.parameters())
    print(f"GPT {n_params / 1e6:.1f}M params, batch {args.batch}, {steps} tokens per sample, "
          f"top-k 100, top-p 0.95, {args.dtype}, {torch.get_num_threads()} threads")

    generate(gpt, prefix, 8, SETTINGS)  # warm-up (allocator, kernels)
    kv = [tokens_per_second(generate, gpt, prefix, steps, seed) for seed in range(args.repeats)]
    print(f"  kv-cache runs: {', '.join(f'{x:.0f}' for x in kv)} tokens/s", flush=True)
    full = tokens_per_second(generate_without_cache, gpt, prefix, steps, 0)
    print(f"  full-recompute run: {full:.1f} tokens/s", flush=True)
    kv += [tokens_per_second(generate, gpt, prefix, steps, seed) for seed in range(args.repeats)]
    print(f"  kv-cache runs: {', '.join(f'{x:.0f}' for x in kv[args.repeats:])} tokens/s", flush=True)
    unpacked = functools.partial(generate, pack_weights=False)  # F.linear (MKL sgemm), not oneDNN's packed weights
    plain = max(tokens_per_second(unpacked, gpt, prefix, steps, seed) for seed in range(args.repeats))
    print(f"kv-cache sampling:       {max(kv):8.0f} tokens/s")
    print(f"full-recompute sampling: {full:8.1f} tokens/s")
    print(f"speed-up:                {max(kv) / full:8.1f}x  (target >= 5x; >= 600 tokens/s)")
    print(f"kv-cache, weights not packed: {plain:5.0f} tokens/s  (packing: {max(kv) / plain:.2f}x)")


if __name__ == "__main__":
    main()
