"""Sampling from the GPT: logit filtering and the autoregressive loop.

How to draw is one validated object, `SamplingSettings` (top-k, top-p, temperature,
guidance, greedy). Every sampler works on a batch and takes an optional
torch.Generator, so a run is reproducible. `generate` feeds one token per step
through a preallocated key/value cache, the GPT running as an inference-only Decoder
(models/inference.py: weights packed once, fused products, a CUDA graph per step on
the GPU); `generate_without_cache` recomputes the whole sequence each step through
the model itself and is the reference the tests and bench/sampling.py compare against.
`generate_sliding_window` samples latent grids larger than the training grid, as
the paper's high-resolution results do.
"""
from __future__ import annotations

import functools
import warnings

import torch

from models.gpt import GPT
from models.inference import CudaGraphStep, Decoder
from models.packed_linear import packed_linears, precision_supported
from models.sampling_settings import SamplingSettings

DEFAULT = SamplingSettings()


def _candidates(logits: torch.Tensor, settings: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens still allowed after temperature, top-k and top-p, as
    (their logits, their token ids); excluded ones get logit -inf. ids is None when
    every token is a candidate (no filtering), so the logits are the full row.

    With top-k, only the k best logits are ever sorted: top-p then works on the
    renormalised top-k distribution (as the original's top-k-then-top-p filter)
    without a full-vocabulary sort.
    """
    logits = logits / settings.temperature
    top_k, top_p = settings.top_k, settings.top_p
    if top_p is not None and top_p >= 1.0:
        top_p = None
    if top_k is not None:
        values, ids = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)  # sorted, best first
    elif top_p is not None:
        values, ids = torch.sort(logits, dim=-1, descending=True)
    else:
        return logits, None
    if top_p is not None:
        probs = values.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        # keep a token while the better ones hold less than top_p: the smallest set with mass >= top_p
        values = values.masked_fill(mass_before >= top_p, float("-inf"))
    return values, ids


def filter_logits(logits: torch.Tensor, settings: SamplingSettings = DEFAULT) -> torch.Tensor:
    """logits (..., vocab) scaled by 1/temperature, with -inf for every token that
    top-k (the k most likely) or top-p (the smallest set holding mass >= p) removes.
    Each filter works alone or together with the other."""
    values, ids = _candidates(logits, settings)
    if ids is None:
        return values
    return torch.full_like(logits, float("-inf")).scatter_(-1, ids, values)


def sample_logits(logits: torch.Tensor, settings: SamplingSettings = DEFAULT,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, vocab) -> (B, 1): the argmax when greedy,
    otherwise a draw from the filtered distribution (see filter_logits)."""
    if settings.greedy:
        return logits.argmax(dim=-1, keepdim=True)
    values, ids = _candidates(logits, settings)
    choice = torch.multinomial(values.softmax(dim=-1), 1, generator=generator)
    return choice if ids is None else ids.gather(-1, choice)


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, uncond + scale * (cond - uncond), written so that
    scale 1 returns the conditional logits exactly."""
    return cond + (scale - 1.0) * (cond - uncond)


@torch.inference_mode()
def generate(gpt: GPT, prefix: torch.Tensor, steps: int, settings: SamplingSettings = DEFAULT,
             generator: torch.Generator | None = None, uncond_prefix: torch.Tensor | None = None,
             callback=None, precision: str | None = None, cuda_graph: bool = True,
             vocab: int | None = None, library: str | None = None) -> torch.Tensor:
    """Continue `prefix` (B, P) by `steps` tokens through a key/value cache -> (B, steps).

    uncond_prefix (B, P): the prefix with the condition replaced by null tokens, for
    classifier-free guidance with settings.guidance_scale; both run as one batch of 2B.
    `callback(step)` is called before each step (progress bars). The GPT runs as a
    Decoder (models/inference.py) with weights at `precision` (default: settings.precision,
    else the model's own, float32 or bfloat16): "float32" samples what the model samples;
    "bfloat16" or "int8" stream fewer bytes per step where this machine runs them natively,
    and fall back to float32 (with a warning) where it does not. On CUDA each step replays a recorded CUDA
    graph unless cuda_graph=False. vocab: draw only tokens below it (image tokens, when the
    GPT's vocabulary also holds condition tokens). library: the CPU library of the products
    (default: this CPU's faster one, models.packed_linear.float32_library, and for bfloat16
    bfloat16_library; "onednn" with bfloat16 takes oneDNN's AMX path, faster at 64+ rows).
    """
    B, P = prefix.shape
    if steps < 1:
        return prefix.new_empty(B, 0)
    if P < 1:
        raise ValueError("generate needs a prefix of at least one token (a condition or SOS token)")
    guided = uncond_prefix is not None
    if settings.guided and not guided:
        raise ValueError(f"guidance_scale {settings.guidance_scale} needs uncond_prefix (the null condition)")
    if guided:
        if uncond_prefix.shape != prefix.shape:
            raise ValueError(f"uncond_prefix {tuple(uncond_prefix.shape)} must match prefix {tuple(prefix.shape)}")
        prefix = torch.cat((prefix, uncond_prefix))
    precision = precision or settings.precision
    if precision is None:
        precision = "bfloat16" if gpt.pos_emb.dtype == torch.bfloat16 else "float32"
    decoder = Decoder.for_model(gpt, native_precision(precision, gpt.pos_emb.device.type), library)
    cache = decoder.new_cache(prefix.shape[0], P + steps - 1)  # the last token is never fed back
    logits = decoder(prefix, cache)
    step = functools.partial(decoder, cache=cache)
    if cuda_graph and cache.kv.is_cuda and steps > 1:
        step = CudaGraphStep(decoder, cache)
    out = prefix.new_empty(B, steps)
    for t in range(steps):
        if callback is not None:
            callback(t)
        last = logits[:, :vocab]
        if guided:
            last = guided_logits(last[:B], last[B:], settings.guidance_scale)
        token = sample_logits(last, settings, generator)
        out[:, t:t + 1] = token
        if t + 1 < steps:
            logits = step(torch.cat((token, token)) if guided else token)
    return out


def native_precision(precision: str, device_type: str = "cpu") -> str:
    """`precision` if this machine runs it natively (models.packed_linear.precision_supported),
    else float32, with a warning: a lower precision is a speed option, never a reason to fail."""
    if precision_supported(precision, device_type):
        return precision
    warnings.warn(f"{precision} weights do not run natively on this {device_type}; sampling in float32",
                  RuntimeWarning, stacklevel=3)
    return "float32"


@torch.inference_mode()
def generate_without_cache(gpt: GPT, prefix: torch.Tensor, steps: int, settings: SamplingSettings = DEFAULT,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """The original's sampler: re-run the whole sequence for every new token -> (B, steps).
    Quadratic in the sequence length; kept as the reference and benchmark baseline."""
    seq = prefix
    for _ in range(steps):
        logits, _ = gpt(seq)
        token = sample_logits(logits[:, -1], settings, generator)
        seq = torch.cat((seq, token), dim=1)
    return seq[:, prefix.shape[1]:]


def window_start(i: int, size: int, window: int, before: int | None = None) -> int:
    """First row (or column) of the training-size window used for position i of a
    grid `size` long: `before` positions before i (default window // 2, the original's
    sample_conditional.py; its make_scene_samples.py uses (window - 1) // 2), shifted to
    stay inside the grid."""
    return min(max(i - (window // 2 if before is None else before), 0), size - window)


@torch.inference_mode()
def generate_sliding_window(gpt: GPT, c: torch.Tensor, z_grid: torch.Tensor, window: tuple[int, int],
                            settings: SamplingSettings = DEFAULT, generator: torch.Generator | None = None,
                            start: int = 0, callback=None, uncond_c: torch.Tensor | None = None,
                            stop: int | None = None, vocab: int | None = None,
                            centre: tuple[int, int] | None = None) -> torch.Tensor:
    """Sample a latent grid larger than the one the GPT was trained on (any H x W, square or not).

    c: condition tokens, either a (B, H, W) grid on the image grid (depth,
    segmentation: cropped with each window), a (B, H-h+1, W-w+1, n) prefix for each
    window position (scenes: the objects seen through that window, c[:, i0, j0] for the
    window whose top-left token is (i0, j0)), or a (B, n) prefix used for every window
    (class or SOS token);
    z_grid (B, H, W): image tokens, of which the positions from raster index `start`
    up to `stop` (default: the end) are (re)sampled. Each position is sampled from a
    window of the training latent size `window` (h, w) placed around it
    (window_start), with the condition cropped alike: the sequence is cond crop +
    image crop, raster order, as in the original's sample_conditional script.
    uncond_c: c with the condition replaced by null tokens, for classifier-free
    guidance with settings.guidance_scale (both run as one batch of 2B). vocab: draw only
    tokens below it (see generate). centre: where the sampled position sits in its window
    away from the borders (window_start's `before` per axis; default (h // 2, w // 2)).
    Returns the completed (B, H, W) grid.
    """
    B, H, W = z_grid.shape
    h, w = window
    if settings.guided and uncond_c is None:
        raise ValueError(f"guidance_scale {settings.guidance_scale} needs uncond_c (the null condition)")
    if c.dim() == 3 and c.shape != z_grid.shape:
        raise ValueError(f"condition grid {tuple(c.shape)} must match image grid {tuple(z_grid.shape)}")
    if c.dim() == 4 and c.shape[:3] != (B, H - h + 1, W - w + 1):
        raise ValueError(f"per-window conditions {tuple(c.shape)} must be (B, {H - h + 1}, {W - w + 1}, n) "
                         f"for a {H}x{W} grid and a {h}x{w} window")
    if uncond_c is not None and uncond_c.shape != c.shape:
        raise ValueError(f"uncond_c {tuple(uncond_c.shape)} must match c {tuple(c.shape)}")
    if H < h or W < w:
        raise ValueError(f"grid {H}x{W} is smaller than the window {h}x{w}")
    guided = settings.guided
    conds = torch.cat((c, uncond_c)) if guided else c
    z_grid = z_grid.clone()
    with packed_linears(gpt):
        for n in range(start, H * W if stop is None else stop):
            if callback is not None:
                callback(n)
            i, j = divmod(n, W)
            i0, j0 = window_start(i, H, h, centre and centre[0]), window_start(j, W, w, centre and centre[1])
            local = (i - i0) * w + (j - j0)
            if c.dim() == 3:
                c_patch = conds[:, i0:i0 + h, j0:j0 + w].reshape(len(conds), -1)
            else:
                c_patch = conds[:, i0, j0] if c.dim() == 4 else conds
            z_patch = z_grid[:, i0:i0 + h, j0:j0 + w].reshape(B, -1)[:, :local]
            if guided:
                z_patch = torch.cat((z_patch, z_patch))
            # the causal model only looks left, so feed the crop up to the token before (i, j)
            logits, _ = gpt(torch.cat((c_patch, z_patch), dim=1))
            last = logits[:, -1, :vocab]
            if guided:
                last = guided_logits(last[:B], last[B:], settings.guidance_scale)
            z_grid[:, i, j] = sample_logits(last, settings, generator)[:, 0]
    return z_grid
