"""The token loop: condition tokens in, image token grids out, batch by batch.

On the training grid the transformer samples through its key/value cache
(Net2NetTransformer.sample_indices -> models.sampling.generate); on any other grid
(larger, square or not) each position is drawn from a training-size window around it
(sample_indices_sliding). Completion keeps the tokens before `start` and samples the
rest. A `preview` callback sees the grid every few positions (the app redraws the
picture); on the training grid that splits the KV-cache loop into chunks that each
re-read the prefix, so only previews pay for it.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from models.permuter import Identity
from models.sampling_settings import SamplingSettings
from tasks.generation.conditions import Condition
from tasks.generation.model import SamplingModel
from tasks.generation.output import decode


def sample_tokens(model: SamplingModel, c: torch.Tensor | None, batch: int, grid: tuple[int, int],
                  settings: SamplingSettings, generator: torch.Generator | None = None,
                  z_init: torch.Tensor | None = None, start: int = 0,
                  on_position: Callable[[], None] | None = None,
                  preview: Callable[[torch.Tensor, int], None] | None = None,
                  preview_every: int = 0) -> torch.Tensor:
    """Image tokens (batch, H*W) in raster order for condition tokens c (batch, n_c) (None:
    unconditional) on a token grid (H, W). z_init (batch, H*W) with `start`: the first
    `start` raster positions are kept (completion). on_position() runs once per sampled
    position; preview(z, done) every `preview_every` positions and at the end."""
    net = model.net
    total = grid[0] * grid[1]
    z = torch.zeros(batch, total, dtype=torch.long, device=model.device) if z_init is None \
        else z_init.to(model.device).long().clone()
    raster = isinstance(net.permuter, Identity)
    if start and not raster:
        raise ValueError("completion needs a model that samples in raster order")
    sliding = grid != model.window
    chunk = preview_every if preview is not None and preview_every > 0 and raster else total
    callback = (lambda _: on_position()) if on_position is not None else None
    position = start
    with model.autocast():
        while position < total:
            stop = min(position + chunk, total)
            if sliding:
                z = net.sample_indices_sliding(c, grid, model.window, z_init=z, settings=settings,
                                               generator=generator, callback=callback, start=position, stop=stop,
                                               centre=model.window_centre)
            else:
                z[:, :stop] = net.sample_indices(c, z[:, :position], steps=stop - position, settings=settings,
                                                 generator=generator, callback=callback)
            position = stop
            if preview is not None:
                preview(z, position)
    return z


def sample_batches(model: SamplingModel, conditions: Sequence[Condition], per_condition: int, batch_size: int,
                   grid: tuple[int, int], settings: SamplingSettings, generator: torch.Generator | None = None,
                   completion: tuple[torch.Tensor, int] | None = None,
                   on_position: Callable[[int], None] | None = None
                   ) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """`per_condition` samples of every condition, `batch_size` at a time (a batch may mix
    conditions). Yields (jobs, pictures): jobs [(condition index, sample number)] and the
    decoded pictures (B, H, W, 3) uint8, so callers write each batch and forget it.
    `conditions[i]` is read once per batch that needs it (a lazy sequence may load it then).
    completion: (tokens (1, H*W) of the image to complete, raster positions kept).
    on_position(batch) runs once per sampled position (progress in tokens)."""
    total = len(conditions) * per_condition
    for first in range(0, total, batch_size):
        jobs = [divmod(k, per_condition) for k in range(first, min(first + batch_size, total))]
        needed = {i: conditions[i] for i in dict.fromkeys(i for i, _ in jobs)}
        tokens = [needed[i].tokens for i, _ in jobs]
        c = None if tokens[0] is None else torch.cat(tokens)
        z_init, start = (completion[0].expand(len(jobs), -1), completion[1]) if completion else (None, 0)
        z = sample_tokens(model, c, len(jobs), grid, settings, generator, z_init, start,
                          on_position=(lambda n=len(jobs): on_position(n)) if on_position else None)
        yield jobs, decode(model, z, grid)
