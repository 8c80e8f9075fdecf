"""Training batches a resumed run continues exactly: batch ``t`` is a function of ``(seed, t)``.

The rows are visited in an endless sequence of permutations, one per pass over the
data (pass ``e`` uses the permutation drawn from ``(seed, e)``). Global batch ``t`` is
the slice ``[t*G, (t+1)*G)`` of that sequence, ``G = batch_size x world size``, and each
DDP rank takes its ``batch_size`` share; batches run on across passes, so every row is
seen once per pass. Random augmentations a dataset draws from torch's RNG (crops,
flips) are drawn under a generator seeded from ``(seed, t, rank)``. So a batch's
content depends only on its number: not on DataLoader workers, not on restarts.

A resumed run sets ``start`` to the number of batches already trained (saved in the
checkpoint by tasks/training/trainer.py) and continues with exactly the batch an
uninterrupted run trains next. A torch ``RandomSampler`` cannot do that: Lightning
restarts it at the beginning of its pass with a fresh shuffle.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info


def _rank() -> tuple[int, int]:
    """(rank, world size): the DDP process group's when there is one (set up before iteration)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SeededBatches(IterableDataset):
    """Endless batches of ``dataset`` for a DataLoader with ``batch_size=None``; Lightning
    injects no sampler into an iterable dataset, so ranks and workers split the work here."""

    def __init__(self, dataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.start = 0                    # batches already trained (set when resuming)
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, n_pass: int) -> np.ndarray:
        if n_pass not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k == n_pass - 1}   # a batch spans <= 2 passes
            self._orders[n_pass] = np.random.default_rng([self.seed, n_pass]).permutation(len(self.dataset))
        return self._orders[n_pass]

    def indices(self, t: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """Rows of batch ``t`` on ``rank``."""
        first = (t * world + rank) * self.batch_size
        passes, offsets = np.divmod(np.arange(first, first + self.batch_size), len(self.dataset))
        rows = np.empty(self.batch_size, dtype=np.int64)
        for n_pass in np.unique(passes):
            rows[passes == n_pass] = self._order(int(n_pass))[offsets[passes == n_pass]]
        return rows

    def batch(self, t: int, rank: int = 0, world: int = 1):
        rows = self.indices(t, rank, world).tolist()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(np.random.SeedSequence([self.seed, t, rank]).generate_state(1)[0]))
            if hasattr(self.dataset, "__getitems__"):
                return self.dataset.__getitems__(rows)
            return default_collate([self.dataset[i] for i in rows])

    def __iter__(self):
        if len(self.dataset) == 0:
            raise ValueError("no training data: the dataset is empty")
        rank, world = _rank()
        worker = get_worker_info()
        workers, me = (worker.num_workers, worker.id) if worker else (1, 0)
        for t in itertools.count(self.start + me, workers):   # the DataLoader takes workers' batches in turn
            yield self.batch(t, rank, world)
