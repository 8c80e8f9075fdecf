"""``taming publish FOLDER s3://bucket/prefix [--name NAME]``: share a trained model.

Uploads a checkpoint folder in the original project's layout
(``checkpoints/last.ckpt`` + ``configs/*.yaml``) to ``s3://bucket/prefix/<name>/``
with a ``manifest.json``: the SHA-256 and size of every file, the params it was
trained with (``--params``, default ``params.yaml``), the git revision and the time.

The manifest is written last, so a reader (``load_pretrained("s3://…/<name>")``
via ``models.s3.fetch_published``) either finds no manifest or a complete upload.
Each object carries its SHA-256 as metadata; publishing again skips files whose
hash already matches, so only a changed checkpoint travels.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
from pathlib import Path

from models.files import sha256_file
from tasks.config.typed import check, load_params


@dataclasses.dataclass
class PublishConfig:
    folder: Path
    uri: str                       # s3://bucket/prefix; the model goes to <uri>/<name>/
    name: str = ""                 # default: the folder's name
    params_file: Path | None = None
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        self.folder = Path(self.folder)
        check(self.uri.startswith("s3://") and len(self.uri) > 5, "uri", f"expected s3://bucket/prefix, got {self.uri!r}")
        self.name = self.name or self.folder.resolve().name
        check("/" not in self.name and self.name not in ("", ".", ".."), "name", f"not a folder name: {self.name!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="checkpoint folder: checkpoints/last.ckpt + configs/*.yaml")
    parser.add_argument("uri", help="s3://bucket/prefix; the model goes to <uri>/<name>/")
    parser.add_argument("--name", default="", help="name under the prefix (default: the folder's name)")


def model_files(folder: Path) -> list[Path]:
    """The files that make a loadable model folder, relative to it; errors name what is missing."""
    ckpt = folder / "checkpoints" / "last.ckpt"
    configs = sorted((folder / "configs").glob("*.yaml"))
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no checkpoint (a model folder holds checkpoints/last.ckpt "
                                f"and configs/*-project.yaml)")
    if not configs:
        raise FileNotFoundError(f"{folder / 'configs'}: no *.yaml project config next to the checkpoint")
    return [p.relative_to(folder) for p in [ckpt, *configs]]


def git_revision(cwd: Path | None = None) -> dict | None:
    """HEAD and whether tracked files differ from it; None outside a git repository."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return {"revision": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return None


def run(cfg: PublishConfig) -> str:
    """Upload ``cfg.folder`` and its manifest; returns the model's URI."""
    from botocore.exceptions import ClientError
    from tqdm import tqdm

    from models import s3

    files = model_files(cfg.folder)
    params = load_params(cfg.params_file, cfg.overrides) if cfg.params_file and cfg.params_file.is_file() else None
    target = s3.join(cfg.uri, cfg.name)
    bucket, prefix = s3.split_uri(target)
    c = s3.client()
    manifest = {
        "name": cfg.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
        "params": params,
        "files": {},
    }
    sent = skipped = 0
    with tqdm(total=sum((cfg.folder / f).stat().st_size for f in files), unit="B", unit_scale=True,
              desc=f"publish {cfg.name}", file=sys.stderr) as bar:
        for rel in files:
            path, key = cfg.folder / rel, f"{prefix}/{rel.as_posix()}"
            digest, size = sha256_file(path), path.stat().st_size
            manifest["files"][rel.as_posix()] = {"sha256": digest, "size": size}
            try:
                head = c.head_object(Bucket=bucket, Key=key)
                unchanged = head["Metadata"].get("sha256") == digest and head["ContentLength"] == size
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
                unchanged = False
            if unchanged:
                skipped += 1
                bar.update(size)
                continue
            c.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Callback=bar.update)
            sent += 1
    # last: its presence tells readers that every file above is complete
    c.put_object(Bucket=bucket, Key=f"{prefix}/{s3.MANIFEST}", ContentType="application/json",
                 Body=(json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    print(f"published {target} ({sent} uploaded, {skipped} unchanged)")
    return target


def main(args: argparse.Namespace) -> int:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    cfg = PublishConfig(folder=args.folder, uri=args.uri, name=args.name,
                        params_file=Path(args.params), overrides=tuple(args.overrides))
    try:
        run(cfg)
    except (BotoCoreError, ClientError, Boto3Error) as e:  # unreachable endpoint, no credentials, no bucket
        print(f"taming publish: upload to {cfg.uri} failed: {e}", file=sys.stderr)
        return 1
    return 0
