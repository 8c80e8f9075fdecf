"""Sampling speed on this CPU: the product's sampler against the original's loop, full
recomputation and the bound this machine's memory allows, side by side in one run.

The issue's setting (issue 19): GPT 8 layers x 512 wide x 8 heads, vocab 1024, 256
tokens after one class token, top-k 100, top-p 0.95, same weights for every sampler.

- product: models.sampling.generate (Decoder with a key/value cache, models/inference.py),
  at float32 and at each lower precision this CPU runs natively; float32 products go through
  the project's own kernels where they build (models/cpu_kernels.c), else MKL on Intel CPUs
  and oneDNN elsewhere (models.packed_linear.float32_library); bfloat16 products through the
  own AVX512-BF16 kernel, else oneDNN (bfloat16_library); the libraries not chosen run too
  ("float32 <library> (not default)", "bfloat16 onednn (not default)"), to check the choice;
- original: `sample_with_past` of the original (taming/modules/transformer/mingpt.py), written
  here over the same weights: every step concatenates the past keys/values of all layers
  (`forward_with_past`), attends with minGPT's attention and filters with transformers'
  `top_k_top_p_filtering` (a full-vocabulary sort);
- full recompute: the whole sequence through GPT.forward for every token (batch 8 only:
  it is quadratic and takes minutes);
- bound: the bytes a step must read (every weight, and the cache up to that step) over the
  read bandwidth measured here on a buffer of the same size, summed over the steps.

Runs alternate between samplers and repeat (--repeats), so a machine that gets busier or
quieter shows in the spread; the best run is the figure, the range is printed beside it.
The load average is printed with each batch. --emulate avx2 re-runs the bench with the
ISA of oneDNN, ATen and MKL limited to AVX2 (same machine, same memory: an emulation of an
AVX2-only CPU's kernels, not of its caches or bandwidth; the own kernels follow ATen's
ISA); int8 then runs on oneDNN's quantized engine, which honours the limit (fbgemm would not).

    python bench/sampling.py [--threads 2] [--batches 8 16 64 256] [--repeats 3] [--emulate avx2]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ISA_LIMITS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                       "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")

if __name__ == "__main__" and "--emulate" in sys.argv:  # before torch loads: the libraries read these once
    limits = ISA_LIMITS[sys.argv[sys.argv.index("--emulate") + 1]]
    if any(os.environ.get(k) != v for k, v in limits.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **limits})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.gpt import GPT, GPTConfig  # noqa: E402
from models.inference import cache_dtype  # noqa: E402
from models.packed_linear import (  # noqa: E402
    PRECISIONS,
    FrozenLinear,
    bfloat16_library,
    cpu_vendor,
    float32_libraries,
    float32_library,
    packing_supported,
    precision_supported,
)
from models.sampling import generate, generate_without_cache  # noqa: E402
from models.sampling_settings import SamplingSettings  # noqa: E402

TOP_K, TOP_P = 100, 0.95
SETTINGS = SamplingSettings(top_k=TOP_K, top_p=TOP_P)
BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


# ---- the original's sampler, over this GPT's weights ----------------------------------------

def top_k_top_p_filtering(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' filter as the original imports it: top-k by threshold, then top-p over a
    sort of the whole vocabulary, scattered back (in place, as there)."""
    top_k = min(top_k, logits.size(-1))
    logits[logits < torch.topk(logits, top_k)[0][..., -1, None]] = -float("inf")
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative_probs > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold too
    remove[..., 0] = 0
    logits[remove.scatter(1, sorted_indices, remove)] = -float("inf")
    return logits


def forward_with_past(gpt: GPT, idx: torch.Tensor, past: list | None, past_length: int):
    """mingpt.GPT.forward_with_past: the past of every earlier step concatenated anew, each
    layer's keys/values concatenated again, minGPT's attention; returns (logits, present)."""
    x = gpt.tok_emb(idx)
    if past is not None:
        past = torch.cat(past, dim=-2)  # n_layer, 2, B, nh, past_length, hs
        x = x + gpt.pos_emb[:, past_length, :]
    else:
        x = x + gpt.pos_emb[:, :idx.shape[1], :]
    presents = []
    for i, block in enumerate(gpt.blocks):
        attn = block.attn
        h = block.ln1(x)
        B, T, C = h.shape
        k, q, v = (m(h).view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2)
                   for m in (attn.key, attn.query, attn.value))
        presents.append(torch.stack((k, v)))
        if past is not None:
            k = torch.cat((past[i, 0], k), dim=-2)
            v = torch.cat((past[i, 1], v), dim=-2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        if past is None:
            att = att.masked_fill(attn.mask[:, :, :T, :T] == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + attn.proj(y)
        x = x + block.mlp(block.ln2(x))
    return gpt.head(gpt.ln_f(x)), torch.stack(presents)


@torch.no_grad()
def original_sample_with_past(gpt: GPT, x: torch.Tensor, steps: int, settings: SamplingSettings,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """mingpt.sample_with_past (temperature 1, sample_logits=True)."""
    sample, cond_len, past = x, x.shape[1], []
    for n in range(steps):
        logits, present = forward_with_past(gpt, x, past or None, past_length=n + cond_len - 1)
        past.append(present)
        logits = top_k_top_p_filtering(logits[:, -1, :] / settings.temperature, settings.top_k, settings.top_p)
        x = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
        sample = torch.cat((sample, x), dim=1)
    return sample[:, cond_len:]


# ---- this machine ------------------------------------------------------------------------------

def cpu_header() -> list[str]:
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in
                    (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                     ("AVX512-VNNI", "avx512_vnni"), ("AMX", "amx_tile")))
    limits = ", ".join(f"{k}={os.environ[k]}" for k in ISA_ENV if k in os.environ) or "none"
    threading = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ)
    native = ", ".join(p for p in PRECISIONS if precision_supported(p))
    return [f"CPU: {model}; {os.cpu_count()} logical CPUs; load average {load()}",
            f"ISA flags (/proc/cpuinfo): {isa}",
            f"torch {torch.__version__}: ATen kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"oneDNN bf16 {'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'}, "
            f"quantized engine {torch.backends.quantized.engine}; {torch.get_num_threads()} threads"
            + (f" ({threading})" if threading else ""),
            f"ISA-limiting environment: {limits}",
            f"precisions run natively: {native}; float32 products through {float32_library()} "
            f"(vendor {cpu_vendor() or 'unknown'})"
            + (f", bfloat16 through {bfloat16_library()}" if precision_supported("bfloat16") else "")]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def read_bandwidth(n_bytes: int, repeats: int = 20) -> float:
    """Best bytes/s of summing a float32 buffer of n_bytes (read once per sum, with this
    process's threads): the speed the step's own working set can be streamed at."""
    buffer = torch.ones(max(n_bytes // 4, 1024))
    buffer.sum()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def peak_flops(repeats: int = 5) -> tuple[float, str]:
    """Best float32 FLOP/s of a 1024^3 matrix product, through torch.matmul and each float32
    library at this ISA (on AMD, matmul runs MKL's generic kernel), and which one it was."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    products = {"matmul": lambda: a @ b}
    for library in float32_libraries():
        if library != "plain":
            frozen = FrozenLinear(b, None, library=library)
            frozen.pack_for(1024)
            products[library] = lambda frozen=frozen: frozen(a)
    rates = {}
    for name, product in products.items():
        product()
        rates[name] = 2 * 1024 ** 3 / min(_timed(product) for _ in range(repeats))
    best = max(rates, key=rates.get)
    return rates[best], best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- the model and its bytes -----------------------------------------------------------------

def demo_gpt(steps: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=1024, block_size=steps + 1, n_layer=8, n_head=8, n_embd=512)).eval()


def step_bytes(gpt: GPT, batch: int, pos: int, precision: str) -> int:
    """What the step at cache position `pos` must read: every product's weight at `precision`
    (biases, norms and the token/position rows are float32 but negligible), and the cached
    keys/values of positions [0, pos] of every layer, in the cache's dtype for the product."""
    weights = sum(m.weight.numel() for m in gpt.modules() if isinstance(m, torch.nn.Linear))
    c = gpt.config
    cache = cache_dtype(precision, "cpu", own_attention=float32_library() == "own").itemsize
    return weights * BYTES[precision] + 2 * c.n_layer * batch * c.n_embd * (pos + 1) * cache


def step_flops(gpt: GPT, batch: int, pos: int) -> int:
    weights = sum(m.weight.numel() for m in gpt.modules() if isinstance(m, torch.nn.Linear))
    return 2 * batch * (weights + 2 * gpt.config.n_layer * gpt.config.n_embd * (pos + 1))


def tokens_per_second(sampler, gpt, prefix, steps, seed, **kwargs) -> float:
    generator = torch.Generator().manual_seed(seed)
    elapsed = _timed(lambda: sampler(gpt, prefix, steps, SETTINGS, generator=generator, **kwargs))
    return prefix.shape[0] * steps / elapsed  # generated tokens only, not the prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=3, help="runs per sampler, alternating; best is reported")
    parser.add_argument("--grid", type=int, default=16, help="side of the token grid (256 tokens)")
    parser.add_argument("--original-up-to", type=int, default=64,
                        help="largest batch the original's loop runs at (its concatenations grow with batch x steps^2)")
    parser.add_argument("--full-recompute-at", type=int, nargs="*", default=[8],
                        help="batches the full-recompute loop runs at (quadratic: minutes each)")
    parser.add_argument("--emulate", choices=sorted(ISA_LIMITS), help="limit oneDNN/ATen/MKL to this ISA (re-executes)")
    args = parser.parse_args()
    run(args)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    if "ONEDNN_MAX_CPU_ISA" in os.environ and "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"  # fbgemm reads no ISA limit; oneDNN's int8 honours it
    steps = args.grid * args.grid
    gpt = demo_gpt(steps)
    precisions = [p for p in PRECISIONS if precision_supported(p)]
    other_libraries = [("float32", name) for name in float32_libraries() if name not in ("plain", float32_library())]
    if "bfloat16" in precisions and bfloat16_library() == "own" and packing_supported(torch.bfloat16):
        other_libraries.append(("bfloat16", "onednn"))
    print("\n".join(cpu_header()))
    print(f"GPT 8 layers x 512, 8 heads, vocab 1024, {sum(p.numel() for p in gpt.parameters()) / 1e6:.1f}M params; "
          f"{steps} tokens after a class token; top-k {TOP_K}, top-p {TOP_P}")
    flops, flops_library = peak_flops()
    print(f"read bandwidth {read_bandwidth(2 ** 30, repeats=4) / 1e9:.1f} GB/s on 1 GiB; "
          f"float32 matrix product {flops / 1e9:.0f} GFLOP/s ({flops_library})", flush=True)

    for batch in args.batches:
        prefix = torch.randint(0, 1000, (batch, 1))
        mean_bytes = {p: sum(step_bytes(gpt, batch, pos, p) for pos in range(steps)) / steps for p in precisions}
        bandwidth = {p: 0.0 for p in precisions}
        runs: dict[str, list[float]] = {}
        # the product at each precision, and float32 and bfloat16 through the libraries this CPU does not default to
        products = {f"product {p}": (p, None) for p in precisions}
        products.update({f"{p} {library} (not default)": (p, library) for p, library in other_libraries})
        for precision, library in products.values():  # warm-up: builds each Decoder once, as a sampling job would
            generate(gpt, prefix, 4, SETTINGS, precision=precision, library=library)
        for repeat in range(args.repeats):  # alternate, so load changes hit every sampler and the bound alike
            for precision in precisions:
                bandwidth[precision] = max(bandwidth[precision], read_bandwidth(int(mean_bytes[precision])))
            for name, (precision, library) in products.items():
                runs.setdefault(name, []).append(
                    tokens_per_second(generate, gpt, prefix, steps, repeat, precision=precision, library=library))
            if batch <= args.original_up_to:
                runs.setdefault("original sample_with_past", []).append(
                    tokens_per_second(original_sample_with_past, gpt, prefix, steps, repeat))
        if batch in args.full_recompute_at:
            runs["full recompute (GPT.forward)"] = [tokens_per_second(generate_without_cache, gpt, prefix, steps, 0)]

        original = max(runs.get("original sample_with_past", [math.nan]))
        times = lambda rate: f"{'-':>10}" if math.isnan(original) else f"{rate / original:9.1f}x"
        bound = {p: batch * bandwidth[p] / mean_bytes[p] for p in precisions}
        compute = batch * steps / (sum(step_flops(gpt, batch, pos) for pos in range(steps)) / flops)
        print(f"\nbatch {batch}: load {load()}")
        print(f"  {'sampler':<30} {'tokens/s':>9}  {'x original':>10}  {'of bound':>8}  runs")
        for name, rates in runs.items():
            share = f"{max(rates) / bound[products[name][0]]:8.0%}" if name in products else f"{'':8}"
            print(f"  {name:<30} {max(rates):9.0f}  {times(max(rates))}  {share}  "
                  f"{', '.join(f'{r:.0f}' for r in rates)}")
        for precision in precisions:
            print(f"  {'bound ' + precision:<30} {bound[precision]:9.0f}  {times(bound[precision])}  "
                  f"{'':8}  {mean_bytes[precision] / 1e6:.0f} MB a step at {bandwidth[precision] / 1e9:.1f} GB/s")
        print(f"  {'compute bound float32':<30} {compute:9.0f}  {times(compute)}  {'':8}  "
              f"{flops / 1e9:.0f} GFLOP/s", flush=True)
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
