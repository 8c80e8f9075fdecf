"""Stage `tokenize` (see tasks/cli.py for the one-line summary)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(cfg) -> None:
    raise NotImplementedError


def main(args: argparse.Namespace) -> int:
    run(None)
    return 0
