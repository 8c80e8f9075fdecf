"""How to draw tokens: one validated object that travels from params.yaml to the sampler.

Plain Python (no torch), so configs validate without importing torch; models/sampling.py
applies it.
"""
from __future__ import annotations

import dataclasses
import math

PRECISIONS = ("float32", "bfloat16", "int8")  # weights of the sampling Decoder (models/inference.py)


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """top_k: keep the k most likely tokens (None: all). top_p: keep the smallest set of
    tokens holding this probability mass (None or 1: all). temperature: divides the
    logits. guidance_scale: classifier-free guidance against the null condition (1: off;
    needs a model trained with condition dropout). greedy: argmax, no randomness.
    precision: the weights' precision while sampling ("float32", "bfloat16", "int8"; None:
    the model's own): lower ones stream fewer bytes a step where the machine runs them
    natively and fall back to float32, with a warning, where it does not."""
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0
    guidance_scale: float = 1.0
    greedy: bool = False
    precision: str | None = None

    def __post_init__(self):
        problems = []
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            problems.append(("top_k", f"must be an integer >= 1 or null, got {self.top_k!r}"))
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(("top_p", f"must be in (0, 1] or null, got {self.top_p!r}"))
        # below ~1e-3 logits / temperature overflow float32 to inf, and softmax gives NaN
        if not (math.isfinite(self.temperature) and self.temperature >= 1e-3):
            problems.append(("temperature", f"must be a finite number >= 0.001 (greedy: true for argmax), "
                                            f"got {self.temperature!r}"))
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            problems.append(("guidance_scale", f"must be a finite number >= 0 (1: off), got {self.guidance_scale!r}"))
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(("precision", f"must be one of {', '.join(PRECISIONS)} or null, got {self.precision!r}"))
        if problems:
            key, message = problems[0]
            raise InvalidSampling(key, message)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0


class InvalidSampling(ValueError):
    """A sampling setting is out of range; ``key`` names it (``top_p``, ...)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
