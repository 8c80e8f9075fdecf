"""A real S3-compatible server (moto) on 127.0.0.1 for the whole test session.

    def test_x(s3_up):                # s3_server, restarted if a test left it down
        s3_up.create_bucket("b")          # boto3 through models/s3.py
        s3_up.endpoint                    # http://127.0.0.1:PORT
        s3_up.stop(); s3_up.start()       # same port, objects kept
        s3_up.stop_after_uploads(3)       # goes down by itself after 3 more uploads
        s3_up.requests                    # (method, path, headers) of every request
        s3_up.objects("b")                # {key: content}

The server runs in this process (werkzeug threads serving moto's app), so its
state lives in moto's in-memory backends and survives a stop/start: a test can
take the server away in the middle of a ``dvc push`` running in a subprocess and
look at what reached the bucket after bringing it back.

The fixture exports distinctive fake credentials (tests assert they never leak
into output or files), the endpoint (``TAMING_S3_ENDPOINT_URL`` for models/s3.py,
``AWS_ENDPOINT_URL_S3`` as a catch-all so no S3 client in the tests can reach AWS)
and the checksum settings the project documents for S3-compatible stores.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from processes import run_bounded

# Fake, distinctive and made fresh each session, so that finding one anywhere (even in a
# copy of this repository's sources) can only mean it leaked.
ACCESS_KEY = "AKIATAMING" + secrets.token_hex(5).upper()
SECRET_KEY = "tamingFakeSecret/" + secrets.token_urlsafe(18)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 on ``127.0.0.1:port``; never another interface."""

    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._uploads_left: int | None = None
        self._down = False      # the upload quota is used up: refuse everything until stopped
        self._server = None
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        if self._stopper is not None:  # a fault-injected stop still closing the port
            self._stopper.join()
        class Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):  # one line per request drowns test output
                pass

        self._down = False
        moto_app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", self.port, self._recording(moto_app), threaded=True,
                                   request_handler=Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket: clients get 'connection refused'."""
        with self._lock:
            server, self._server = self._server, None
            self._uploads_left = None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop_after_uploads(self, n: int) -> None:
        """Fault injection: let ``n`` more object uploads (PUT) complete, then go down."""
        self._uploads_left = n

    # -- request log + fault injection -----------------------------------------------
    def _recording(self, app):
        def wsgi(environ, start_response):
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            is_upload = environ["REQUEST_METHOD"] == "PUT" and environ.get("PATH_INFO", "/").count("/") > 1
            self.requests.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), headers))
            if self._down:  # gone: while the port closes, a request (on a kept-alive connection too) is cut off
                environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
                return
            yield from app(environ, start_response)
            if is_upload:
                with self._lock:
                    if self._uploads_left is not None:
                        self._uploads_left -= 1
                        if self._uploads_left <= 0:
                            self._down = True
                            # shutdown() waits for serve_forever, which must not wait for us
                            self._stopper = threading.Thread(target=self.stop, daemon=True)
                            self._stopper.start()
        return wsgi

    # -- helpers ---------------------------------------------------------------------
    def client(self):
        from models import s3
        return s3.client(self.endpoint)

    def create_bucket(self, name: str) -> str:
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> content."""
        c, out = self.client(), {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out


# Everything a command run through ``run_logged`` printed: tests assert no credential leaked.
OUTPUTS: list[str] = []


def run_logged(cwd, *args: str, env: dict[str, str | None] | None = None, check: bool = True,
               cpu_s: float = 900) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's scripts (dvc, taming) first on PATH; keep its output.
    ``env`` adds variables; a value of None removes one."""
    merged = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
              "DVC_NO_ANALYTICS": "1", **(env or {})}
    proc = run_bounded(list(args), cwd=cwd, env={k: v for k, v in merged.items() if v is not None}, cpu_s=cpu_s)
    OUTPUTS.extend([proc.stdout, proc.stderr])
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_no_credentials(*dirs: Path, bucket_objects: dict[str, bytes] | None = None) -> None:
    """The fake credentials appear in no captured output, no file under ``dirs`` (git history
    included, uncompressed), and no uploaded object."""
    secrets = [ACCESS_KEY, SECRET_KEY]
    for text in OUTPUTS:
        assert not any(s in text for s in secrets), "a credential appeared in command output"
    for d in dirs:
        for f in Path(d).rglob("*"):
            if f.is_file() and f.relative_to(d).parts[0] != ".git":
                data = f.read_bytes()
                assert not any(s.encode() in data for s in secrets), f"credential written to {f}"
        if (Path(d) / ".git").is_dir():
            history = run_logged(d, "git", "log", "-p", "--all").stdout
            assert not any(s in history for s in secrets), f"credential committed in {d}"
    for key, body in (bucket_objects or {}).items():
        assert not any(s.encode() in body for s in secrets), f"credential uploaded in {key}"


def s3_environment(endpoint: str, home: str) -> dict[str, str]:
    """What a process needs to talk to the test server, and nothing of the user's AWS setup."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.path.join(home, "aws-config"),           # absent on purpose
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "TAMING_S3_ENDPOINT_URL": endpoint,
        # the settings models/s3.py uses and README "Sharing through S3" documents for DVC
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }


@pytest.fixture(scope="session")
def s3_server():
    home = tempfile.mkdtemp(prefix="taming-s3-home-")
    server = S3Server(_free_loopback_port())
    env = s3_environment(server.endpoint, home)
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_up(s3_server):
    """The session server, brought back up if a test left it stopped."""
    if not s3_server.running:
        s3_server.start()
    yield s3_server
    s3_server._uploads_left = None
    if not s3_server.running:
        s3_server.start()
