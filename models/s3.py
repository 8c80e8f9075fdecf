"""The one place that makes S3 clients (boto3), for the weights mirror, checkpoint
publishing and ``load_pretrained("s3://…")``.

Endpoint: ``TAMING_S3_ENDPOINT_URL`` (or boto3's own ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``) for S3-compatible stores (MinIO, Ceph, moto). Credentials
come from the usual boto3 chain (environment, ``~/.aws``), never from this repo.

botocore >= 1.36 computes a CRC32 of every upload and sends it (``x-amz-checksum-crc32``,
or over HTTPS an ``aws-chunked`` body with a trailing checksum), and asks for checksums
on downloads. Many S3-compatible stores (older MinIO and Ceph RGW, some appliances)
reject those requests or store the chunk framing as if it were the object. We ask for
checksums only when an operation requires them (``when_required``, botocore's behaviour
before 1.36); integrity does not depend on them: DVC addresses objects by MD5 and
published models are checked against their manifest's SHA-256 after download. DVC's
own S3 client is configured the same way through the environment variables
``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` and
``AWS_RESPONSE_CHECKSUM_VALIDATION=when_required`` (the Makefile's push/pull set them).

Published models (``taming publish``) are folders under ``s3://bucket/prefix/<name>/``
whose ``manifest.json`` is written last; ``fetch_published`` reads the manifest first
and verifies every file against it, so a reader never takes a half-published model.
The local copy (``<cache>/<bucket>/<prefix>``: each part of the URI must be a plain
folder name, so a URI cannot reach outside the cache) holds exactly the manifest's
files: a new version is assembled beside it and swapped in whole, so nothing of an
earlier version (a config since renamed) remains for ``locate`` to pick.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from models.errors import ModelFileError
from models.files import sha256_file

MANIFEST = "manifest.json"


class PublishedModelError(ModelFileError, ValueError):
    """A published model's URI or manifest cannot be used; the message says which and why."""


def endpoint_url() -> str | None:
    return (os.environ.get("TAMING_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or None)


def client(endpoint: str | None = None):
    import boto3
    from botocore.config import Config

    cfg = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client("s3", endpoint_url=endpoint or endpoint_url(), config=cfg)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return u.netloc, u.path.lstrip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def cache_dir() -> Path:
    """Where downloaded published models live: ``TAMING_S3_CACHE`` or ``~/.cache/taming/s3``."""
    if os.environ.get("TAMING_S3_CACHE"):
        return Path(os.environ["TAMING_S3_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taming" / "s3"


def cache_folder(uri: str) -> Path:
    """Where the published model at ``uri`` is kept: ``<cache_dir>/<bucket>/<prefix>``. The
    bucket and every segment of the prefix must be a plain folder name (no '..', '.', empty
    or hidden segment), so no URI leads outside the cache."""
    bucket, prefix = split_uri(uri)
    parts = [bucket, *prefix.rstrip("/").split("/")]
    for part in parts:
        if not part or part.startswith(".") or "\\" in part:
            raise PublishedModelError(f"{uri}: refusing to cache it under {cache_dir()}: {part!r} is not a plain "
                                      "folder name (empty, '.', '..' and hidden segments could lead outside)")
    return cache_dir().joinpath(*parts)


def _safe_relpath(rel: str, uri: str) -> PurePosixPath:
    """A manifest comes from the network: its file names must stay inside the folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or ".." in p.parts or p.name == MANIFEST:
        raise PublishedModelError(f"{join(uri, MANIFEST)}: refusing file name {rel!r} outside the model folder")
    return p


def fetch_published(uri: str, dest: str | Path | None = None) -> Path:
    """Download a model published by ``taming publish`` and return its local folder
    (default: ``cache_folder(uri)``), which then holds exactly the manifest's files.

    Reads ``<uri>/manifest.json`` first (it is written last, so its presence means the
    upload finished). A local copy that already mirrors it is used as it is; otherwise the
    new copy is assembled in a temporary folder beside it (unchanged files hard-linked
    from the old copy, the others downloaded and verified) and swapped in whole.
    """
    from botocore.exceptions import ClientError

    bucket, prefix = split_uri(uri)
    dest = Path(dest) if dest is not None else cache_folder(uri)
    c = client()
    try:
        manifest = json.loads(c.get_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{MANIFEST}")["Body"].read())
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(f"{join(uri, MANIFEST)} not found: nothing (completely) published "
                                    f"there; publish with `taming publish FOLDER {uri.rsplit('/', 1)[0]}`") from e
        raise
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(m, dict) and "sha256" in m for m in files.values()):
        raise PublishedModelError(f"{join(uri, MANIFEST)}: not a `taming publish` manifest (no files with sha256)")
    wanted = {_safe_relpath(rel, uri): meta["sha256"] for rel, meta in files.items()}
    current = _local_files(dest)
    unchanged = {rel for rel, digest in wanted.items() if rel in current and sha256_file(dest / rel) == digest}
    if unchanged == set(wanted) and current == set(wanted) | {PurePosixPath(MANIFEST)} \
            and json.loads((dest / MANIFEST).read_text()) == manifest:
        return dest
    staging = dest.parent / f".tmp-{dest.name}.{secrets.token_hex(8)}"
    staging.mkdir(parents=True)
    try:
        for rel, digest in wanted.items():
            local = staging / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            if rel in unchanged:
                os.link(dest / rel, local)     # the same bytes: no download
                continue
            c.download_file(bucket, f"{prefix.rstrip('/')}/{rel}", str(local))
            got = sha256_file(local)
            if got != digest:
                raise PublishedModelError(f"{join(uri, str(rel))}: SHA-256 {got} does not match the manifest's "
                                          f"{digest} (republished while downloading? fetch again)")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _local_files(folder: Path) -> set[PurePosixPath]:
    """Every file and link under ``folder`` (empty if there is none), relative to it."""
    if not folder.is_dir():
        return set()
    return {PurePosixPath(p.relative_to(folder).as_posix()) for p in folder.rglob("*") if not p.is_dir()}


def _swap_in(new: Path, dest: Path) -> None:
    """Replace the folder ``dest`` by ``new``: two renames, so a reader finds the old copy,
    no copy (briefly), or the new one, never a mixture. If another process installed a copy
    between the two renames, theirs stays (it was verified against a manifest too)."""
    old = dest.parent / f".old-{dest.name}.{secrets.token_hex(8)}"
    try:
        os.rename(dest, old)
    except FileNotFoundError:
        old = None
    try:
        os.rename(new, dest)
    except OSError:
        if not dest.is_dir():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
