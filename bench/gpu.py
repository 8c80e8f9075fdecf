"""The prepared GPU script: one run of named checks, each printing its own lines.

Meant for a lent GPU machine (sized to finish well under 10 minutes on an H200); more
checks can be appended to CHECKS with the @check decorator. Without CUDA it says so and
runs the checks that need none, so the script itself runs (and is tested) everywhere.

- environment: device, memory, torch/CUDA versions;
- cpu-sampling: a short bench/sampling.py on this machine's CPU (2 threads): the product's
  sampler against the original's loop, so the GPU machine's CPU is measured too;
- sampling-exactness: on the GPU, the CUDA-graph step against the eager step and the
  full recompute (float32, fixed seed), and bf16 against float32;
- sampling-demo / sampling-paper: tokens/s and images/s (256 tokens an image, top-k 100,
  top-p 0.95) of the product's CUDA path (bf16 weights and cache, a static cache, each step
  a replayed CUDA graph) against the same loop without those (float32, eager), batch sizes
  doubling up to what memory (or the time budget) allows; the demo GPT (8 x 512, vocab
  1024) and the paper's (24 x 1024, 16 heads, vocab 16384);
- guidance: classifier-free guidance as one doubled batch, against unguided sampling.

    python bench/gpu.py [--only NAME ...] [--budget SECONDS]
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sampling import SETTINGS, cpu_header, demo_gpt, original_sample_with_past, tokens_per_second  # noqa: E402
from models.gpt import GPT, GPTConfig  # noqa: E402
from models.inference import Decoder  # noqa: E402
from models.packed_linear import PRECISIONS, precision_supported  # noqa: E402
from models.sampling import generate, generate_without_cache  # noqa: E402
from models.sampling_settings import SamplingSettings  # noqa: E402

CHECKS: dict[str, tuple[bool, callable]] = {}
STEPS = 256  # a 16 x 16 token grid after one class token


def check(name: str, needs_cuda: bool = True):
    def register(fn):
        CHECKS[name] = needs_cuda, fn
        return fn
    return register


class Budget:
    """Seconds left for the whole script; sweeps stop early rather than overrun the lease."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


@check("environment", needs_cuda=False)
def environment(budget: Budget) -> None:
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_capability()}), "
              f"{total / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free, bf16 {torch.cuda.is_bf16_supported()}")
    else:
        print("GPU: none (CUDA absent)")


@check("cpu-sampling", needs_cuda=False)
def cpu_sampling(budget: Budget, threads: int = 2, steps: int = 64) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        print("\n".join(cpu_header()))
        gpt = demo_gpt(STEPS)
        prefix = torch.randint(0, 1000, (8, 1))
        print(f"demo GPT, batch 8, {steps} tokens (a short run; bench/sampling.py runs 256 and the bound)")
        rates = {}
        for precision in [p for p in PRECISIONS if precision_supported(p)]:
            generate(gpt, prefix, 2, SETTINGS, precision=precision)  # builds the Decoder once
            rates[f"product {precision}"] = max(
                tokens_per_second(generate, gpt, prefix, steps, seed, precision=precision) for seed in range(2))
        rates["original sample_with_past"] = max(
            tokens_per_second(original_sample_with_past, gpt, prefix, steps, seed) for seed in range(2))
        for name, rate in rates.items():
            print(f"  {name:<28} {rate:8.0f} tokens/s  {rate / rates['original sample_with_past']:5.1f}x original")
    finally:
        torch.set_num_threads(previous)


def paper_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=16384, block_size=STEPS + 1, n_layer=24, n_head=16, n_embd=1024)).eval()


def cuda_seconds(gpt: GPT, batch: int, settings: SamplingSettings = SETTINGS, steps: int = STEPS,
                 **options) -> float:
    """Seconds to sample `batch` images of `steps` tokens on the GPU (Decoder and graph built inside)."""
    prefix = torch.randint(0, 1000, (batch, 1), device="cuda")
    uncond = torch.full_like(prefix, 1000) if settings.guided else None
    generator = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    generate(gpt, prefix, steps, settings, generator=generator, uncond_prefix=uncond, **options)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def cache_bytes(gpt: GPT, rows: int, dtype_bytes: int) -> int:
    c = gpt.config
    return c.n_layer * 2 * rows * c.n_embd * STEPS * dtype_bytes


@check("sampling-exactness")
def sampling_exactness(budget: Budget) -> None:
    gpt = demo_gpt(STEPS).cuda()
    prefix = torch.randint(0, 1000, (8, 1), device="cuda")
    greedy = SamplingSettings(greedy=True)
    run = functools.partial(generate, gpt, prefix, 64, greedy)
    eager, graphed = run(precision="float32", cuda_graph=False), run(precision="float32")
    reference = generate_without_cache(gpt, prefix, 64, greedy)
    bf16 = run(precision="bfloat16")
    agree = lambda a, b: f"{(a == b).float().mean().item():.1%}"
    print(f"greedy tokens, float32: graph = eager {agree(graphed, eager)}, eager = full recompute "
          f"{agree(eager, reference)}; bf16 = float32 {agree(bf16, eager)}")
    with torch.inference_mode():  # logits of one graph-shaped step against the eager step
        decoder = Decoder.for_model(gpt)
        cache = decoder.new_cache(8, 65)
        decoder(prefix, cache)
        token = torch.randint(0, 1024, (8, 1), device="cuda")
        static = decoder.step_static(token, torch.tensor(cache.pos, device="cuda"), cache).clone()
        eager_logits = decoder(token, cache)
    print(f"one step's logits, static (graph) vs eager: max |difference| {(static - eager_logits).abs().max().item():.2e}")
    sampled = SamplingSettings(top_k=100, top_p=0.95)
    seeded = lambda **kw: generate(gpt, prefix, 64, sampled, generator=torch.Generator(device="cuda").manual_seed(0), **kw)
    print(f"top-k/top-p tokens, same seed: graph = eager {agree(seeded(), seeded(cuda_graph=False))}")


def sweep(name: str, gpt: GPT, budget: Budget, batches: list[int], share: float) -> None:
    """Product (bf16 + graphs) against float32 eager at each batch that fits; the product
    alone where only its bf16 cache fits; stops where neither fits or the next batch would
    overrun this sweep's share of the budget."""
    params = sum(p.numel() for p in gpt.parameters())
    c = gpt.config
    print(f"{name}: GPT {c.n_layer} x {c.n_embd}, {c.n_head} heads, vocab {c.vocab_size}, {params / 1e6:.0f}M params; "
          f"{STEPS} tokens an image, top-k 100, top-p 0.95")
    print(f"{'batch':>6}  {'float32 eager tok/s':>20} {'img/s':>8}  {'bf16 + graph tok/s':>19} {'img/s':>8}  {'speed-up':>8}")
    deadline = time.monotonic() + budget.left() * share
    for precision, graph in (("float32", False), ("bfloat16", True)):  # kernels, cuBLAS, the Decoders
        cuda_seconds(gpt, 8, steps=8, precision=precision, cuda_graph=graph)
    for batch in batches:
        free, _ = torch.cuda.mem_get_info()
        eager = fast = None
        try:
            if cache_bytes(gpt, batch, 4) < 0.6 * free:
                eager = cuda_seconds(gpt, batch, precision="float32", cuda_graph=False)
            if cache_bytes(gpt, batch, 2) < 0.6 * free:
                fast = min(cuda_seconds(gpt, batch, precision="bfloat16") for _ in range(2))
        except torch.cuda.OutOfMemoryError:
            print(f"{batch:6d}  stop: out of GPU memory")
            break
        finally:
            torch.cuda.empty_cache()
        if fast is None:
            print(f"{batch:6d}  stop: a bf16 cache of {cache_bytes(gpt, batch, 2) / 2**30:.0f} GiB "
                  f"exceeds 60 % of the {free / 2**30:.0f} GiB free")
            break
        base = (f"{batch * STEPS / eager:20.0f} {batch / eager:8.1f}" if eager
                else f"{'(cache does not fit)':>20} {'':>8}")
        ratio = f"{eager / fast:7.1f}x" if eager else ""
        print(f"{batch:6d}  {base}  {batch * STEPS / fast:19.0f} {batch / fast:8.1f}  {ratio:>8}", flush=True)
        if time.monotonic() + 3 * ((eager or fast) + 2 * fast) > deadline:
            print("        stop: the next batch would overrun this check's share of the time budget")
            break


@check("sampling-demo")
def sampling_demo(budget: Budget) -> None:
    sweep("demo", demo_gpt(STEPS).cuda(), budget, [8, 64, 256, 1024, 4096], share=0.3)


@check("sampling-paper")
def sampling_paper(budget: Budget) -> None:
    sweep("paper", paper_gpt().cuda(), budget, [8, 64, 256, 1024, 2048], share=0.6)


@check("guidance")
def guidance(budget: Budget) -> None:
    gpt = paper_gpt().cuda()
    guided = SamplingSettings(top_k=100, top_p=0.95, guidance_scale=3.0)
    for batch in (8, 256):
        plain = cuda_seconds(gpt, batch, precision="bfloat16")
        both = cuda_seconds(gpt, batch, guided, precision="bfloat16")
        print(f"paper GPT, batch {batch}: guided (one batch of {2 * batch} rows) {batch / both:.1f} img/s, "
              f"unguided {batch / plain:.1f} img/s: guidance costs {both / plain:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    args = parser.parse_args()
    budget = Budget(args.budget)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("CUDA absent: running the checks that need no GPU only")
    failed = []
    for name, (needs_cuda, fn) in CHECKS.items():
        if (args.only and name not in args.only) or (needs_cuda and not cuda):
            continue
        print(f"\n== {name}", flush=True)
        start = time.monotonic()
        try:
            fn(budget)
        except Exception:  # one broken check must not cost the others their share of the lease
            traceback.print_exc()
            failed.append(name)
        print(f"   ({time.monotonic() - start:.0f} s)", flush=True)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
