"""The weights resolver: order (explicit path > cache > S3 mirror > URL), verification
before anything enters the cache, the offline error, and the ``taming weights`` CLI.
Downloads come from a real HTTP server on 127.0.0.1."""
import functools
import hashlib
import http.server
import threading

import pytest

from models import weights
from models.weights import WeightsChecksumError, WeightsFile, WeightsNotFound, resolve
from tasks import cli

PAYLOAD = b"not really a state dict, but bytes are bytes\n" * 100


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache, no mirror, offline unless a test says otherwise."""
    monkeypatch.setenv("TAMING_WEIGHTS_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TAMING_WEIGHTS_S3", raising=False)
    monkeypatch.setenv("TAMING_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path/www on a loopback port; yields (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def register(monkeypatch, url="http://127.0.0.1:9/none.pth", **checks) -> WeightsFile:
    """A registry entry for PAYLOAD (checks default to its true SHA-256 and size)."""
    checks = checks or {"sha256": hashlib.sha256(PAYLOAD).hexdigest(), "size": len(PAYLOAD)}
    w = WeightsFile("tiny", "tiny-weights.pth", url, "test file", **checks)
    monkeypatch.setitem(weights.REGISTRY, "tiny", w)
    return w


def test_offline_and_missing_gives_one_clear_error(env):
    with pytest.raises(WeightsNotFound) as e:
        resolve("midas_v21")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for needle in ["midas_v21_384.pt", "https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_384.pt",
                   "taming weights import midas_v21", str(env / "cache" / "midas_v21_384.pt"),
                   "TAMING_WEIGHTS_S3", "TAMING_OFFLINE"]:
        assert needle in msg


def test_registry_names_the_contract_files_with_hex_checks():
    assert set(weights.REGISTRY) == {"midas_v20", "midas_v21", "midas_v21_small", "deeplabv2_cocostuff", "vgg16",
                                     "lpips_vgg", "inception_fid"}
    for w in weights.REGISTRY.values():
        for h in (w.sha256, w.sha256_prefix, w.md5):
            assert h is None or (len(h) >= 8 and int(h, 16) >= 0)
        assert w.url.startswith("https://") and w.note  # every entry says where its checks come from


def test_explicit_path_wins_and_a_missing_one_is_named(env, tmp_path):
    own = tmp_path / "finetuned.pt"
    own.write_bytes(b"mine")
    assert resolve("midas_v21", own) == own
    with pytest.raises(WeightsNotFound, match="nope.pt"):
        resolve("midas_v21", tmp_path / "nope.pt")


def test_download_verifies_then_installs_atomically(env, http_root, monkeypatch):
    root, base = http_root
    (root / "tiny-weights.pth").write_bytes(PAYLOAD)
    register(monkeypatch, url=f"{base}/tiny-weights.pth")
    monkeypatch.setenv("TAMING_OFFLINE", "1")
    with pytest.raises(WeightsNotFound, match="TAMING_OFFLINE"):
        resolve("tiny")
    monkeypatch.delenv("TAMING_OFFLINE")
    path = resolve("tiny")
    assert path == env / "cache" / "tiny-weights.pth" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-weights.pth"]  # no temporary left
    (root / "tiny-weights.pth").unlink()
    assert resolve("tiny") == path  # now from the cache


def test_a_corrupt_download_never_enters_the_cache(env, http_root, monkeypatch):
    root, base = http_root
    (root / "tiny-weights.pth").write_bytes(PAYLOAD[:-1] + b"?")
    register(monkeypatch, url=f"{base}/tiny-weights.pth")
    monkeypatch.delenv("TAMING_OFFLINE")
    with pytest.raises(WeightsChecksumError, match="tiny-weights.pth"):
        resolve("tiny")
    assert list((env / "cache").iterdir()) == []


def test_http_errors_fall_through_to_the_clear_error(env, http_root, monkeypatch):
    _, base = http_root
    register(monkeypatch, url=f"{base}/missing.pth")
    monkeypatch.delenv("TAMING_OFFLINE")
    with pytest.raises(WeightsNotFound, match="404"):
        resolve("tiny")


@pytest.mark.parametrize("checks", [{"md5": hashlib.md5(PAYLOAD).hexdigest()},
                                    {"sha256_prefix": hashlib.sha256(PAYLOAD).hexdigest()[:8]},
                                    {"size": len(PAYLOAD)}])
def test_partial_knowledge_is_checked(env, tmp_path, monkeypatch, checks):
    register(monkeypatch, **checks)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(PAYLOAD)
    bad.write_bytes(PAYLOAD + b"x")
    weights.verify("tiny", good)
    with pytest.raises(WeightsChecksumError):
        weights.verify("tiny", bad)


def test_import_verifies_and_a_hand_placed_cache_file_is_checked(env, tmp_path, monkeypatch):
    register(monkeypatch)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"wrong")
    with pytest.raises(WeightsChecksumError):
        weights.import_file("tiny", bad)
    assert not weights.cached_path("tiny").exists()
    src = tmp_path / "downloaded-elsewhere.pth"
    src.write_bytes(PAYLOAD)
    assert weights.import_file("tiny", src) == weights.cached_path("tiny")
    assert resolve("tiny").read_bytes() == PAYLOAD
    weights.cached_path("tiny").write_bytes(b"tampered")
    with pytest.raises(WeightsChecksumError):
        resolve("tiny")


def test_unreachable_mirror_is_reported_and_skipped(env, monkeypatch):
    monkeypatch.setenv("TAMING_WEIGHTS_S3", "s3://weights/mirror")
    monkeypatch.setenv("TAMING_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(WeightsNotFound) as e:
        resolve("vgg16")
    assert "s3://weights/mirror/vgg16-397923af.pth (unreachable" in str(e.value)


def test_cli_import_list_and_fetch(env, tmp_path, monkeypatch, capsys):
    register(monkeypatch)
    src = tmp_path / "tiny.pth"
    src.write_bytes(PAYLOAD)
    assert cli.main(["weights", "import", "tiny", str(src)]) == 0
    assert cli.main(["weights", "fetch", "tiny"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(weights.cached_path("tiny"))
    assert cli.main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "cached" in listing and "midas_v21" in listing and "missing" in listing
    assert cli.main(["weights", "fetch", "deeplabv2_cocostuff"]) == 1
    assert "taming weights import deeplabv2_cocostuff" in capsys.readouterr().err
    assert cli.main(["weights", "fetch", "no_such_model"]) == 2
