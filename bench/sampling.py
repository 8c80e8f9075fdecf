"""KV-cache sampling vs. recomputing the whole sequence each step, on the CPU.

The issue's setting: a 16x16 token grid (256 tokens after one class token), batch 8,
GPT 8 layers x 512 wide x 8 heads, vocab 1024, top-k 100 and top-p 0.95. Both
samplers run in the same process, alternately, so a busy machine slows both alike
and the ratio stays meaningful.

    .venv/bin/python bench/sampling.py [--threads 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from models.gpt import GPT, GPTConfig
from models.sampling import generate, generate_without_cache


def tokens_per_second(sampler, gpt, prefix, steps, seed) -> float:
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    out = sampler(gpt, prefix, steps, top_k=100, top_p=0.95, generator=generator)
    elapsed = time.perf_counter() - start
    return out.numel() / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per sampler (best is reported)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--grid", type=int, default=16, help="side of the token grid")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = args.grid * args.grid
    gpt = GPT(GPTConfig(vocab_size=1024, block_size=steps + 1, n_layer=8, n_head=8, n_embd=512)).eval()
    prefix = torch.randint(0, 1000, (args.batch, 1))  # one class token per sample
    n_params = sum(p.numel() for p in gpt.parameters())
    print(f"GPT {n_params / 1e6:.1f}M params, batch {args.batch}, {steps} tokens per sample, "
          f"top-k 100, top-p 0.95, {torch.get_num_threads()} threads")

    generate(gpt, prefix, 8, top_k=100, top_p=0.95)  # warm-up (allocator, kernels)
    best = {"kv-cache": 0.0, "full recompute": 0.0}
    for repeat in range(args.repeats):
        best["kv-cache"] = max(best["kv-cache"], tokens_per_second(generate, gpt, prefix, steps, repeat))
        best["full recompute"] = max(best["full recompute"],
                                     tokens_per_second(generate_without_cache, gpt, prefix, steps, repeat))
        print(f"  run {repeat + 1}: kv-cache {best['kv-cache']:.0f} tok/s (best so far), "
              f"full recompute {best['full recompute']:.0f} tok/s (best so far)", flush=True)
    ratio = best["kv-cache"] / best["full recompute"]
    print(f"kv-cache sampling:       {best['kv-cache']:8.0f} tokens/s")
    print(f"full-recompute sampling: {best['full recompute']:8.0f} tokens/s")
    print(f"speed-up:                {ratio:8.1f}x")


if __name__ == "__main__":
    main()
