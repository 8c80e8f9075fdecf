"""A real Prefect server on a loopback port, once per test session.

``prefect server start`` runs in its own process group with a private
PREFECT_HOME (its SQLite database lives there), so tests never touch a
developer's Prefect setup, and teardown kills the whole group. The fixture
points this process at the server (PREFECT_API_URL in os.environ and in
Prefect's settings) so child processes - the ``prefect`` CLI, a process
serving deployments - inherit it.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT_S = 120  # about 20 s on a quiet 2-core machine


@dataclasses.dataclass
class PrefectServer:
    api_url: str
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a child process talking to this server."""
        env = dict(os.environ)
        env.update(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(self.home), **extra)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy at {url} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A running ``prefect server start --host 127.0.0.1`` with its own PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.dvc_tasks import stop_process_group

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home, log=home / "server.log")
    # the UI too: tests look at artifacts in a real browser; it must call this server's API
    env = server.env(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=server.api_url)
    env.pop("PREFECT_API_URL")  # the server does not talk to itself
    with open(server.log, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    try:
        wait_healthy(server.api_url, proc, server.log, START_TIMEOUT_S)
        os.environ.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(home))
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_HOME: str(home)}):
            yield server
    finally:
        stop_process_group(proc)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
