"""``taming exp run -S key=value ... [--queue | --temp] [-n NAME]``: ``dvc exp run`` with params.yaml
checked first and kept as written.

``dvc exp run -S`` writes params.yaml with DVC's own YAML code before anything checks the
values: flow-style mappings are re-wrapped, ``null`` becomes an empty value, and a value
only a stage refuses (``top_p: 1.5``) stays in the file when the experiment fails, so the
next ``dvc repro`` fails too. This command instead

- checks the whole resulting params first (tasks/config/params.py), for every combination
  of a ``--queue`` sweep: a bad value changes nothing, runs nothing and queues nothing;
- in the workspace, writes the values itself (tasks/config/edit.py: only those values'
  text changes), runs ``dvc exp run``, and puts params.yaml back if the experiment fails;
- with ``--queue`` or ``--temp``, hands ``-S`` to DVC unchanged: DVC then runs the
  experiment in a temporary copy and never writes the workspace's params.yaml.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tasks.config.edit import parse_overrides, restoring, set_params
from tasks.config.typed import ConfigError
from tasks.runtime.errors import StageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["run"])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--queue", action="store_true", help="queue it (a sweep: -S top_k=50,100,250); "
                      "`dvc exp run --run-all` runs the queue")
    mode.add_argument("--temp", action="store_true", help="run it now in a temporary copy of the workspace")
    parser.add_argument("-n", "--name", help="the experiment's name")


def combinations(overrides: list[str], params: str) -> list[dict]:
    """Every setting ``-S`` asks for ({dotted key: value} each), DVC's sweep syntax expanded
    (``top_k=50,100`` is two experiments)."""
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        sweeps = get_hydra_sweeps({params: overrides})
    except Exception as e:  # noqa: BLE001 - DVC's parser errors name the bad override
        raise ConfigError(f"-S {' -S '.join(overrides)}: {e}") from e
    return [parse_overrides(sweep[params]) for sweep in sweeps]


def main(args: argparse.Namespace) -> int:
    params = Path(args.params)
    settings = combinations(args.overrides, args.params) if args.overrides else [{}]
    for setting in settings:
        set_params(params, setting, write=False)  # ConfigError names the key; nothing written
    dvc = [sys.executable, "-m", "dvc", "exp", "run", *(["-n", args.name] if args.name else [])]
    if args.queue or args.temp:
        sets = [a for o in args.overrides for a in ("-S", o)]
        return subprocess.run([*dvc, "--queue" if args.queue else "--temp", *sets]).returncode
    if len(settings) > 1:
        raise ConfigError(f"{len(settings)} settings asked for (a sweep): add --queue, then `dvc exp run --run-all`")
    with restoring(params):
        set_params(params, settings[0])
        code = subprocess.run(dvc).returncode
        if code != 0:
            raise StageError(f"dvc exp run failed (exit code {code}); {params} is back as it was "
                             f"(dvc.lock records any stage that did finish)")
    return 0
