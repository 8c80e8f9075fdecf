"""Progress with count, rate and ETA, readable on a terminal and in a log file.

On a terminal it is an ordinary tqdm bar. When stderr is not a terminal (``dvc repro >
log``, a Prefect worker, CI) a redrawn bar would be one endless line of carriage
returns, so the same bar is written as a plain line every ``TAMING_PROGRESS_SECONDS``
seconds (default 30) and once at the end:

    tokenize train:  40%|####      | 2/5 [01:10<01:45, 35.2s/part]
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TextIO

from tqdm import tqdm


class _LineWriter:
    """A file for tqdm that turns each redraw ('\\r' + bar) into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", initial: float = 0, leave: bool = True, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm over ``iterable`` (or updated by hand), drawn for a terminal or a log."""
    if is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, disable=disable,
                    dynamic_ncols=True, **kwargs)
    seconds = float(os.environ.get("TAMING_PROGRESS_SECONDS", "30"))
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=True, disable=disable,
                file=_LineWriter(sys.stderr), mininterval=seconds, maxinterval=seconds, ncols=100,
                ascii=True, **kwargs)
