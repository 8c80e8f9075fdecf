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
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from models.files import atomic_path, sha256_file

MANIFEST = "manifest.json"


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


def _safe_relpath(rel: str, uri: str) -> PurePosixPath:
    """A manifest comes from the network: its file names must stay inside the folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or ".." in p.parts:
        raise ValueError(f"{join(uri, MANIFEST)}: refusing file name {rel!r} outside the model folder")
    return p


def fetch_published(uri: str, dest: str | Path | None = None) -> Path:
    """Download a model published by ``taming publish`` and return its local folder.

    Reads ``<uri>/manifest.json`` first (it is written last, so its presence means the
    upload finished), then each file it lists, skipping local copies whose SHA-256
    already matches; every download is verified before it is renamed into place.
    """
    from botocore.exceptions import ClientError

    bucket, prefix = split_uri(uri)
    dest = Path(dest) if dest is not None else cache_dir() / bucket / prefix
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
        raise ValueError(f"{join(uri, MANIFEST)}: not a `taming publish` manifest (no files with sha256)")
    for rel, meta in files.items():
        local = dest / _safe_relpath(rel, uri)
        if local.is_file() and sha256_file(local) == meta["sha256"]:
            continue
        with atomic_path(local) as tmp:
            c.download_file(bucket, f"{prefix.rstrip('/')}/{rel}", str(tmp))
            got = sha256_file(tmp)
            if got != meta["sha256"]:
                raise ValueError(f"{join(uri, rel)}: SHA-256 {got} does not match the manifest's "
                                 f"{meta['sha256']} (republished while downloading? fetch again)")
    # the local copy, last as on S3: a complete folder is one with a manifest
    with atomic_path(dest / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest
