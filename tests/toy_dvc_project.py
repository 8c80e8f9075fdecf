"""A toy DVC project with the shape of the real pipeline, for testing flows fast.

Stages (same names as dvc.yaml's): acquire -> annotate@depth (shardable) ->
train-vqgan@{image,depth} -> sample (top_k / top_p, writes a PNG grid) ->
evaluate (metrics/eval.json). Each stage runs in well under a second.

Its params.yaml is a valid (tiny) params file of the real pipeline, because the
flows check every override against the pipeline's schema before writing it.

Two marker files in the repo root drive failures:
- ``FAIL_ONCE`` makes train-vqgan@image fail once (it deletes the marker, as a
  transient error would go away);
- ``FAIL_EVALUATE`` makes evaluate fail every time.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOY_SCRIPT = '''\
"""Toy stages: python toy.py <stage> [args]."""
import argparse, json, os, struct, sys, time, zlib
from pathlib import Path

import yaml

params = yaml.safe_load(open("params.yaml"))
ITEMS = [f"img{i}" for i in range(6)]


def png(path, rgb, size=4):
    """A tiny solid-colour PNG, written without third-party code."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\\0" + bytes(rgb) * size for _ in range(size))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


p = argparse.ArgumentParser()
p.add_argument("stage")
p.add_argument("item", nargs="?")
p.add_argument("--shard", type=int, default=0)
p.add_argument("--num-shards", type=int, default=1)
a = p.parse_args()

if a.stage == "acquire":
    Path("data").mkdir(exist_ok=True)
    Path("data/raw.txt").write_text("\\n".join(ITEMS) + "\\n")
elif a.stage == "annotate":
    out = Path("data/depth")
    out.mkdir(parents=True, exist_ok=True)
    if a.num_shards > 1:
        time.sleep(2)  # a shard takes a while, so concurrent shards visibly overlap
    for i, name in enumerate(Path("data/raw.txt").read_text().split()):
        if i % a.num_shards == a.shard:
            (out / f"{name}.txt").write_text(f"depth of {name} by shard {a.shard}/{a.num_shards}\\n")
            print(f"depth shard {a.shard}/{a.num_shards}: {name}")
elif a.stage == "train-vqgan":
    if a.item == "image" and os.path.exists("FAIL_ONCE"):
        os.remove("FAIL_ONCE")
        sys.exit("toy transient failure: connection reset while reading data/raw.txt")
    Path("data/vqgan").mkdir(parents=True, exist_ok=True)
    steps = params["vqgan"][a.item]["max_steps"]
    Path(f"data/vqgan/{a.item}.txt").write_text(f"{a.item} trained {steps} steps\\n")
    print(f"trained {a.item} for {steps} steps")
elif a.stage == "sample":
    print(f"toy sampling with top_k={params['top_k']} top_p={params['top_p']}")
    png("data/samples/grid.png", (params["top_k"] % 256, 128, int(255 * params["top_p"])))
elif a.stage == "evaluate":
    if os.path.exists("FAIL_EVALUATE"):
        sys.exit("toy evaluate failed on purpose: FAIL_EVALUATE exists")
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/eval.json").write_text(json.dumps({"fid": params["top_k"] / 10 + params["top_p"], "top_k": params["top_k"]}))
'''

PARAMS = """\
# Toy parameters. Comments must survive overrides.
top_k: 100     # sampling: keep the k most likely tokens
top_p: 1.0
vqgan:
  image: {max_steps: 3, n_embed: 128}
  depth: {max_steps: 3, n_embed: 64}   # a flow-style mapping stays one
annotate: {depth: {model: groundtruth}}
evaluate: {resolution: 32}
"""

DVC_YAML = """\
stages:
  acquire:
    cmd: python toy.py acquire
    deps: [toy.py]
    outs: [data/raw.txt]
  annotate:
    foreach: [depth]
    do:
      cmd: python toy.py annotate ${item}
      deps: [data/raw.txt]
      outs: [data/depth]
  train-vqgan:
    foreach: [image, depth]
    do:
      cmd: python toy.py train-vqgan ${item}
      deps: [data/raw.txt, data/depth]
      params:
        - vqgan.${item}.max_steps
      outs:
        - data/vqgan/${item}.txt
  sample:
    cmd: python toy.py sample
    deps: [data/vqgan/image.txt, data/vqgan/depth.txt]
    params: [top_k, top_p]
    outs: [data/samples/grid.png]
  evaluate:
    cmd: python toy.py evaluate
    deps: [data/samples/grid.png]
    params: [top_k, top_p]
    metrics:
      - metrics/eval.json:
          cache: false
"""


def make_toy_repo(dest: Path) -> Path:
    """Create the toy project in ``dest``: a git repo with DVC and one commit."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "toy.py").write_text(TOY_SCRIPT)
    (dest / "params.yaml").write_text(PARAMS)
    (dest / "dvc.yaml").write_text(DVC_YAML)
    (dest / ".gitignore").write_text("FAIL_ONCE\nFAIL_EVALUATE\n")

    def run(*cmd):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True, text=True)

    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "toy@example.invalid")
    run("git", "config", "user.name", "toy")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "toy pipeline")
    return dest


if __name__ == "__main__":  # for trying flows by hand: python tests/toy_dvc_project.py DIR
    import sys

    print(make_toy_repo(Path(sys.argv[1])))
