"""``taming weights list | fetch NAME | import NAME PATH | push NAME [s3://bucket/prefix]``.

A thin command line over models/weights.py: see where each pretrained file would
come from, put one into the cache (download, or a copy obtained elsewhere), and
fill the team's S3 mirror so machines without internet resolve it from there.
"""
from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,fetch,import,push}")
    sub.add_parser("list", help="registry entries, their cache state and checks")
    p = sub.add_parser("fetch", help="resolve NAME into the cache (S3 mirror, then official URL)")
    p.add_argument("name")
    p = sub.add_parser("import", help="verify a local file and copy it into the cache as NAME")
    p.add_argument("name")
    p.add_argument("path")
    p = sub.add_parser("push", help="upload the cached NAME to the S3 mirror as <prefix>/<filename>")
    p.add_argument("name")
    p.add_argument("uri", nargs="?", default=None, help="s3://bucket/prefix (default: $TAMING_WEIGHTS_S3)")


def _list() -> None:
    from models import weights

    print(f"cache: {weights.cache_dir()}")
    print(f"mirror: {os.environ.get('TAMING_WEIGHTS_S3') or '(TAMING_WEIGHTS_S3 not set)'}")
    for w in weights.REGISTRY.values():
        state = "cached" if weights.cached_path(w.name).is_file() else "missing"
        checks = ", ".join(f"{k} {v}" for k, v in [("sha256", w.sha256), ("sha256-prefix", w.sha256_prefix),
                                                     ("md5", w.md5), ("size", w.size)] if v) or "none"
        print(f"{w.name:<20} {state:<8} {w.filename}\n{'':<20} url: {w.url}\n{'':<20} checks: {checks}"
              f"{' (' + w.note + ')' if w.note else ''}")


def run(args: argparse.Namespace) -> None:
    from models import weights

    if args.action == "list":
        _list()
    elif args.action == "fetch":
        print(weights.resolve(args.name))
    elif args.action == "import":
        print(weights.import_file(args.name, args.path))
    elif args.action == "push":
        print(weights.push(args.name, args.uri))


def main(args: argparse.Namespace) -> int:
    try:
        run(args)
    except KeyError as e:  # not a registry name
        print(f"taming weights: {e.args[0]}", file=sys.stderr)
        return 2
    return 0
