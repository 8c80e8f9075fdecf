"""The one place that makes S3 clients (boto3), for the weights mirror, checkpoint
publishing and ``load_pretrained("s3://…")``.

Endpoint: ``TAMING_S3_ENDPOINT_URL`` (or boto3's own ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``) for S3-compatible stores (MinIO, Ceph, moto). Credentials
come from the usual boto3 chain (environment, ``~/.aws``), never from this repo.

botocore >= 1.36 sends CRC checksums on every upload by default, which many
S3-compatible stores reject or mis-handle; we ask for checksums only when the
operation requires them.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


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
