"""Process parallelism whose results never depend on the number of workers."""
from __future__ import annotations

import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator


@contextlib.contextmanager
def ordered_map(workers: int) -> Iterator[Callable]:
    """An order-preserving ``map``: the builtin one, or over ``workers`` processes (the same results)."""
    if workers <= 1:
        yield map
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda fn, jobs: pool.map(fn, jobs, chunksize=16)
