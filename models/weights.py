"""Find a pretrained weights file: explicit path > local cache > S3 mirror > official URL.

    from models.weights import resolve, WeightsNotFound
    path = resolve("vgg16")              # pathlib.Path of a verified local file

Everything the resolver brings into the cache (download, S3 mirror, ``taming weights
import``) is checked against what is known about the file -- its SHA-256, or where
the publisher gives no full hash, the SHA-256 prefix in its torch.hub-style name, its
MD5, its size -- before it is renamed into place, so a half download or a wrong file
never looks like a finished one. An explicit ``path`` is the caller's own file and is
used as given (a re-saved or fine-tuned state dict is legitimate there; strict
``load_state_dict`` still checks its layout).

Environment:
    TAMING_WEIGHTS_DIR  cache directory (default ``$XDG_CACHE_HOME/taming/weights``,
                        i.e. ``~/.cache/taming/weights``)
    TAMING_WEIGHTS_S3   mirror, ``s3://bucket/prefix``; objects are ``<prefix>/<filename>``
                        (endpoint and credentials: see models/s3.py)
    TAMING_OFFLINE=1    never touch the network for official URLs
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from models import s3
from models.errors import ModelFileError
from models.files import atomic_path


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    name: str
    filename: str
    url: str
    description: str
    sha256: str | None = None         # full digest; None: not published / not known to us
    sha256_prefix: str | None = None  # from a torch.hub-style "<name>-<sha256 prefix>.pth" file name
    md5: str | None = None
    size: int | None = None           # bytes
    note: str = ""                    # where the checks come from, or why there are none


# Hashes and sizes below are only ones published by the file's owners (in the file name
# by torch.hub convention, or in the code that downloads it). None means "not known":
# we verify what is known and never make a hash up.
REGISTRY: dict[str, WeightsFile] = {w.name: w for w in [
    WeightsFile(
        "midas_v20", "model-f46da743.pt",
        "https://github.com/intel-isl/MiDaS/releases/download/v2/model-f46da743.pt",
        "MiDaS v2.0 (MidasNet, ResNeXt-101 32x8d): what torch.hub 'intel-isl/MiDaS' 'MiDaS' served when the "
        "published D-RIN models' depth maps were made (the original README: use v2.0 with them)",
        sha256_prefix="f46da743",
        note="torch.hub check_hash: SHA-256 prefix in the file name; full SHA-256 and size not known to us"),
    WeightsFile(
        "midas_v21", "midas_v21_384.pt",
        "https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_384.pt",
        "MiDaS v2.1 (MidasNet, ResNeXt-101 32x8d); what torch.hub 'intel-isl/MiDaS' 'MiDaS' loads",
        sha256_prefix="f6b98070",
        note="first published as model-f6b98070.pt / midas_v21-f6b98070.pt (torch.hub check_hash: "
             "SHA-256 prefix); full SHA-256 and size not known to us"),
    WeightsFile(
        "midas_v21_small", "midas_v21_small_256.pt",
        "https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_small_256.pt",
        "MiDaS v2.1 small (MidasNet_small, EfficientNet-Lite3); torch.hub 'MiDaS_small'",
        sha256_prefix="70d6b9c8",
        note="first published as model-small-70d6b9c8.pt (torch.hub check_hash: SHA-256 prefix); "
             "full SHA-256 and size not known to us"),
    WeightsFile(
        "deeplabv2_cocostuff", "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
        "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
        "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
        "DeepLab v2 ResNet-101 MSC, COCO-Stuff 164k (kazuto1011/deeplab-pytorch), as taming's "
        "scripts/extract_segmentation.py uses it",
        note="no hash or size published: the file is used unverified"),
    WeightsFile(
        "vgg16", "vgg16-397923af.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        "torchvision VGG16 ImageNet (IMAGENET1K_V1), the LPIPS feature network",
        sha256_prefix="397923af", size=553433881,
        note="SHA-256 prefix from torchvision's file name; size agrees with torchvision's "
             "_file_size 527.796 MiB; full SHA-256 not known to us"),
    WeightsFile(
        "lpips_vgg", "vgg.pth",
        "https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1",
        "LPIPS v0.1 linear heads for VGG (lin0..lin4), the copy the original taming repo downloads "
        "(taming/modules/losses/lpips.py via taming/util.py); richzhang/PerceptualSimilarity "
        "lpips/weights/v0.1/vgg.pth holds the same weights",
        md5="d507d7349b931f0638a25a48a722f98a",
        note="MD5 from taming/util.py MD5_MAP['vgg_lpips']; SHA-256 and size not known to us"),
    WeightsFile(
        "inception_fid", "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        "InceptionV3 FID weights (TF inception-2015-12-05 converted), as torch-fidelity loads them",
        sha256_prefix="6726825d",
        note="SHA-256 prefix from the torch.hub-style file name; full SHA-256 and size not known to us"),
]}


class WeightsNotFound(FileNotFoundError, ModelFileError):
    """No source could provide the file; the message says how to provide it."""


class WeightsChecksumError(ValueError, ModelFileError):
    """A file does not match the registry's size or hash."""


def entry(name: str) -> WeightsFile:
    if name not in REGISTRY:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def cache_dir() -> Path:
    if os.environ.get("TAMING_WEIGHTS_DIR"):
        return Path(os.environ["TAMING_WEIGHTS_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taming" / "weights"


def cached_path(name: str) -> Path:
    return cache_dir() / entry(name).filename


def mirror_uri(name: str, mirror: str | None = None) -> str | None:
    mirror = mirror or os.environ.get("TAMING_WEIGHTS_S3")
    return s3.join(mirror, entry(name).filename) if mirror else None


def verify(name: str, path: str | Path) -> None:
    """Raise WeightsChecksumError unless ``path`` matches everything known about ``name``."""
    w, path = entry(name), Path(path)
    size = path.stat().st_size
    if w.size is not None and size != w.size:
        raise WeightsChecksumError(f"{path}: {size} bytes, expected {w.size} for {w.filename}")
    if not (w.sha256 or w.sha256_prefix or w.md5):
        return
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    expected = [("sha256", w.sha256, sha.hexdigest()), ("sha256 prefix", w.sha256_prefix, sha.hexdigest()),
                ("md5", w.md5, md5.hexdigest())]
    for kind, want, got in expected:
        if want and not got.startswith(want):
            raise WeightsChecksumError(f"{path}: {kind} {got} does not match {want} expected for {w.filename}")


# Cache hits are re-verified (a person may drop files into the cache by hand), but
# only once per process: hashing 500 MB for every model construction adds up.
_verified: set[tuple[str, int, int]] = set()


def _verify_once(name: str, path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        verify(name, path)
        _verified.add(key)


def resolve(name: str, path: str | Path | None = None) -> Path:
    """Local path of weights ``name``: explicit ``path`` > cache > S3 mirror > official URL."""
    w = entry(name)
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFound(f"{w.name}: explicit weights path {path} does not exist")
        return path
    target = cached_path(name)
    if target.is_file():
        _verify_once(name, target)
        return target
    tried = [f"cache: {target} (missing)"]
    uri = mirror_uri(name)
    if uri is None:
        tried.append("S3 mirror: TAMING_WEIGHTS_S3 not set")
    else:
        reason = _fetch_s3(name, uri, target)
        if reason is None:
            return target
        tried.append(f"S3 mirror: {uri} ({reason})")
    if os.environ.get("TAMING_OFFLINE", "") not in ("", "0"):
        tried.append(f"URL: {w.url} (skipped: TAMING_OFFLINE is set)")
    else:
        reason = _fetch_url(name, target)
        if reason is None:
            return target
        tried.append(f"URL: {w.url} ({reason})")
    raise WeightsNotFound(_not_found_message(w, target, tried))


def _not_found_message(w: WeightsFile, target: Path, tried: list[str]) -> str:
    lines = "\n".join(f"  - {t}" for t in tried)
    return (f"weights {w.name!r} ({w.filename}) not found. Official URL: {w.url}\nTried:\n{lines}\n"
            f"Provide it by one of:\n"
            f"  - passing its path explicitly (the stage's 'weights' parameter)\n"
            f"  - taming weights import {w.name} /path/to/{w.filename}\n"
            f"  - copying it to {target} (cache dir: TAMING_WEIGHTS_DIR)\n"
            f"  - setting TAMING_WEIGHTS_S3=s3://bucket/prefix to a mirror holding <prefix>/{w.filename}\n"
            f"    (fill one with: taming weights push {w.name} s3://bucket/prefix)")


@contextlib.contextmanager
def _installing(name: str, target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` to fill; verified, then renamed into the cache.
    A failed fill or check leaves nothing in the cache."""
    with atomic_path(target) as tmp:
        yield tmp
        verify(name, tmp)


def _fetch_s3(name: str, uri: str, target: Path) -> str | None:
    """Download the mirror's copy into the cache; returns why not, or None on success."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3.split_uri(uri)
    try:
        with _installing(name, target) as tmp:
            s3.client().download_file(bucket, key, str(tmp))
        return None
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        return "not there" if code in ("404", "NoSuchKey", "NoSuchBucket") else f"S3 error: {e}"
    except BotoCoreError as e:  # no endpoint, no credentials, connection refused
        return f"unreachable: {e}"


def _fetch_url(name: str, target: Path, timeout: float = 30.0) -> str | None:
    """Download the official URL into the cache; returns why not, or None on success."""
    from tqdm import tqdm

    w = entry(name)
    try:
        request = urllib.request.Request(w.url, headers={"User-Agent": "taming-pipeline"})
        with _installing(name, target) as tmp, urllib.request.urlopen(request, timeout=timeout) as r, \
                open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=w.filename, file=sys.stderr) as bar:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        return None
    except (urllib.error.URLError, OSError) as e:  # offline, DNS, HTTP errors, timeouts
        return f"download failed: {e}"


def import_file(name: str, src: str | Path) -> Path:
    """Copy a file obtained elsewhere into the cache after verifying it."""
    src, target = Path(src), cached_path(name)
    if not src.is_file():
        raise WeightsNotFound(f"{src}: no such file to import as {name!r}")
    with _installing(name, target) as tmp:
        shutil.copyfile(src, tmp)
    return target


def push(name: str, mirror: str | None = None) -> str:
    """Upload the resolved (verified) file to the S3 mirror as ``<prefix>/<filename>``."""
    uri = mirror_uri(name, mirror)
    if uri is None:
        raise WeightsNotFound("no mirror given: pass s3://bucket/prefix or set TAMING_WEIGHTS_S3")
    bucket, key = s3.split_uri(uri)
    s3.client().upload_file(str(resolve(name)), bucket, key)
    return uri


def load_state_dict(name: str, path: str | Path | None = None) -> dict:
    """Resolve ``name`` and read its state dict without running pickled code (weights_only)."""
    import torch

    state = torch.load(resolve(name, path), map_location="cpu", weights_only=True)
    # MiDaS training checkpoints nest the weights under "model" beside the optimizer state.
    return state["model"] if isinstance(state, dict) and "optimizer" in state else state
