"""Prefect flows end to end: a real server on loopback, the deployments served by
``python -m flows.deployments`` in a subprocess, runs triggered with the
``prefect`` CLI exactly as a user types them, and real DVC underneath.

Most runs use a toy DVC project with the real pipeline's shape
(tests/toy_dvc_project.py), so a run takes seconds; the last test runs the
real pipeline on the smoke profile (a couple of minutes).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import numpy as np
import pytest
import yaml
from browser import Chromium
from fixtures_pipeline import REPO_ROOT, make_smoke_repo
from fixtures_prefect import free_port
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound
from toy_dvc_project import make_toy_repo

from flows.dvc_tasks import CommandFailed, apply_overrides, stage_order, stop_process_group, stream
from tasks.config.typed import ConfigError

PREFECT = str(Path(sys.executable).parent / "prefect")
DEPLOYMENTS = ("train-drin/train-drin", "train-vqgan/train-vqgan", "sample/sample", "extract-depth/extract-depth")
FAST_RETRY = {"retry_delay_seconds": 0.05}  # the default backoff starts at 30 s


def dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def test_stage_order_is_dvcs_graph_with_foreach_items_expanded(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    assert stage_order(repo) == ["acquire", "annotate@depth", "train-vqgan@image", "train-vqgan@depth", "sample",
                                 "evaluate"]
    assert stage_order(repo, ["train-vqgan"]) == ["acquire", "annotate@depth", "train-vqgan@image",
                                                  "train-vqgan@depth"]
    assert stage_order(repo, ["annotate@depth", "train-vqgan@image"]) == ["acquire", "annotate@depth",
                                                                          "train-vqgan@image"]
    # Dependencies first even when dvc.yaml lists the stages the other way round.
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  last: {cmd: cat b > c, deps: [b], outs: [c]}\n"
        "  middle: {cmd: cat a > b, deps: [a], outs: [b]}\n"
        "  first: {cmd: echo > a, outs: [a]}\n"
        "  alone: {cmd: echo > z, outs: [z]}\n")
    assert stage_order(repo) == ["first", "middle", "last", "alone"]


def test_overrides_are_checked_whole_and_change_only_their_values(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    before = (repo / "params.yaml").read_text()
    apply_overrides(repo, {"top_k": 7, "vqgan.depth.max_steps": 5})
    after = (repo / "params.yaml").read_text()
    assert after == before.replace("top_k: 100     #", "top_k: 7       #").replace(
        "depth: {max_steps: 3,", "depth: {max_steps: 5,")  # comments, alignment, flow style: as written
    for bad, message in [({"top_p": 1.5}, "top_p: must be in (0, 1]"), ({"top_kk": 5}, "unknown parameter(s): top_kk"),
                         ({"top_k": 129}, "top_k: 129 is more than the image codebook's 128 entries"),
                         ({"vqgan.image.max_step": 5}, "unknown parameter(s): vqgan.image.max_step")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            apply_overrides(repo, bad)
        assert (repo / "params.yaml").read_text() == after  # refused before anything is written


def test_stream_logs_each_line_and_a_failure_carries_the_last_lines(tmp_path, caplog):
    caplog.set_level("INFO", logger="flows")
    with pytest.raises(CommandFailed, match=r"(?s)demo failed with exit code 3.*one\ntwo"):
        stream("echo one; echo two >&2; exit 3", tmp_path, "demo")
    assert [r.getMessage() for r in caplog.records][1:] == ["one", "two"]  # after the "$ command" line


def test_an_interrupted_stream_stops_everything_the_command_started(tmp_path):
    def interrupt(signum, frame):  # stands in for Prefect's TerminationSignal on cancellation
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            stream("sleep 60 & echo $! > child.pid; echo started; wait", tmp_path, "sleeper")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    child = int((tmp_path / "child.pid").read_text())
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text(), "the command's child outlived the stream"


def test_stopping_a_group_waits_for_children_and_kills_one_that_ignores_sigterm(tmp_path):
    # the leader dies at once on SIGTERM; its child ignores it (ignored signals survive exec)
    proc = subprocess.Popen("(trap '' TERM; exec sleep 60) & echo $! > child.pid; wait", shell=True,
                            cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "child.pid").exists() or not (tmp_path / "child.pid").read_text().strip():
        assert time.monotonic() < deadline, "the command did not start its child"
        time.sleep(0.05)
    child = int((tmp_path / "child.pid").read_text())
    while Path(f"/proc/{child}/comm").read_text().strip() != "sleep":  # exec'd: the trap is set
        assert time.monotonic() < deadline, "the child did not start sleeping"
        time.sleep(0.05)
    start = time.monotonic()
    stop_process_group(proc, grace_s=1)
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text(), "a child that ignored SIGTERM lived on"
    assert proc.returncode is not None and 1 <= time.monotonic() - start < 20  # it got the grace, then SIGKILL


def forward(listen_port: int, target_port: int) -> socketserver.ThreadingTCPServer:
    """A TCP relay 127.0.0.1:listen_port -> 127.0.0.1:target_port (stop with .shutdown())."""
    class Relay(socketserver.BaseRequestHandler):
        def handle(self):
            with socket.create_connection(("127.0.0.1", target_port)) as upstream:
                def pump(src, dst):
                    with contextlib.suppress(OSError):  # either side may close first
                        while data := src.recv(65536):
                            dst.sendall(data)
                        dst.shutdown(socket.SHUT_WR)
                threading.Thread(target=pump, args=(upstream, self.request), daemon=True).start()
                pump(self.request, upstream)
                time.sleep(0.5)  # let the response drain

    server = socketserver.ThreadingTCPServer(("127.0.0.1", listen_port), Relay)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_serving_waits_for_a_server_that_is_still_starting(prefect_server, capsys):
    """`make prefect-serve` right after `make prefect-server`: the server answers a few seconds later."""
    from flows.deployments import wait_for_server

    port, relays = free_port(), []
    threading.Timer(3, lambda: relays.append(forward(port, urlsplit(prefect_server.api_url).port))).start()
    start = time.monotonic()
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api", timeout=60)
    finally:
        for relay in relays:
            relay.shutdown()
    assert time.monotonic() - start >= 3
    out = capsys.readouterr().out
    assert f"waiting up to 60 s for the Prefect server at http://127.0.0.1:{port}/api" in out and "is up" in out


def test_serving_without_a_server_says_what_to_start(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    proc = subprocess.run([sys.executable, "-m", "flows.deployments", "--repo", str(repo), "--wait", "2"],
                          env={**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "No Prefect server answers at http://127.0.0.1:" in proc.stderr and "make prefect-server" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def served_repo(prefect_server, tmp_path_factory):
    """A toy repo, and `python -m flows.deployments --repo <it>` serving all deployments."""
    repo = make_toy_repo(tmp_path_factory.mktemp("served") / "toy")
    log_path = repo.parent / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.deployments", "--repo", str(repo)],
                                cwd=repo.parent, env=prefect_server.env(PREFECT_RUNNER_POLL_FREQUENCY="1"),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            for name in DEPLOYMENTS:
                while True:
                    assert proc.poll() is None, f"serving exited:\n{log_path.read_text()[-3000:]}"
                    try:
                        client.read_deployment_by_name(name)
                        break
                    except ObjectNotFound:
                        assert time.monotonic() < deadline, f"{name} not served:\n{log_path.read_text()[-3000:]}"
                        time.sleep(0.5)
        yield repo
    finally:
        stop_process_group(proc)


def deployment_run(server, name: str, params: dict, timeout: int = 150):
    """`prefect deployment run NAME --params JSON --watch`; returns (CLI result, flow run)."""
    cli = subprocess.run([PREFECT, "deployment", "run", name, "--params", json.dumps(params),
                          "--watch", "--watch-timeout", str(timeout)],
                         env=server.env(COLUMNS="200"), capture_output=True, text=True, timeout=timeout + 60)
    found = re.search(r"UUID: ([0-9a-f-]{36})", cli.stdout)
    assert found, f"no flow run created:\n{cli.stdout}\n{cli.stderr}"
    deadline = time.monotonic() + 30  # --watch returns at the final state; the API may lag a moment
    with get_client(sync_client=True) as client:
        while not (run := client.read_flow_run(UUID(found[1]))).state.is_final() and time.monotonic() < deadline:
            time.sleep(0.5)
    return cli, run


def run_logs(flow_run, expect: str, wait_s: float = 15) -> str:
    """All log messages of a flow run (tasks included), once ``expect`` has arrived
    (logs are shipped to the API in batches, so they may trail the final state)."""
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            messages, offset = [], 0
            while batch := client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
                                            offset=offset, limit=200, sort=LogSort.TIMESTAMP_ASC):
                messages += [log.message for log in batch]
                offset += len(batch)
            text = "\n".join(messages)
            if expect in text or time.monotonic() > deadline:
                return text
            time.sleep(0.5)


def task_runs(flow_run) -> dict:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    return {run.name: run for run in sorted(runs, key=lambda r: r.expected_start_time)}


def artifacts(flow_run) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    return {a.key: json.loads(a.data) if a.type == "table" else a.data for a in found}


def test_train_drin_runs_every_stage_retries_a_transient_failure_and_publishes(prefect_server, served_repo, tmp_path):
    repo = served_repo
    (repo / "FAIL_ONCE").touch()  # train-vqgan@image fails on its first attempt
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "-d", "store", str(remote))

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", {"overrides": {"top_k": 7}, **FAST_RETRY})

    logs = run_logs(run, "trained image")
    assert cli.returncode == 0 and run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{logs[-4000:]}"
    assert run.parameters["repo"] == str(repo)  # the served default
    tasks = task_runs(run)
    stages = ["acquire", "annotate@depth", "train-vqgan@image", "train-vqgan@depth", "sample", "evaluate"]
    assert list(tasks) == ["dvc pull", *stages, "dvc push", "publish metrics", "publish grids"]
    assert all(t.state.is_completed() for t in tasks.values())
    assert tasks["train-vqgan@image"].run_count == 2 and tasks["train-vqgan@depth"].run_count == 1
    # Stage output streamed into the run's logs, the failure included.
    assert "toy transient failure: connection reset" in logs
    assert "trained image for 3 steps" in logs and "toy sampling with top_k=7 top_p=1.0" in logs

    # DVC holds the record: every stage in dvc.lock and up to date, the override
    # applied as `dvc exp run -S` applies it (comment kept), the outputs pushed.
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == set(stages)
    assert json.loads(dvc(repo, "status", "--json")) == {}
    assert "top_k: 7       # sampling: keep the k most likely tokens" in (repo / "params.yaml").read_text()
    assert json.loads(dvc(repo, "status", "--cloud", "--json")) == {}
    assert any(remote.rglob("*")), "dvc push sent nothing"

    published = artifacts(run)
    assert {"file": "metrics/eval.json", "metric": "fid", "value": pytest.approx(1.7)} in published["train-drin-metrics"]
    assert {"file": "metrics/eval.json", "metric": "top_k", "value": 7} in published["train-drin-metrics"]
    grid = base64.b64encode((repo / "data/samples/grid.png").read_bytes()).decode()
    assert f"![data/samples/grid.png](data:image/png;base64,{grid})" in published["train-drin-samples"]



def test_a_stage_that_keeps_failing_fails_the_run_and_puts_params_back(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    (repo / "FAIL_EVALUATE").touch()
    before = (repo / "params.yaml").read_text()
    params = {"repo": str(repo), "overrides": {"top_k": 9}, "retries": 1, **FAST_RETRY}

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", params)

    assert cli.returncode != 0 and run.state.is_failed(), f"{run.state}\n{cli.stdout}"
    tasks = task_runs(run)
    assert tasks["sample"].state.is_completed()
    assert tasks["evaluate"].state.is_failed() and tasks["evaluate"].run_count == 2  # retried once, then given up
    assert "publish metrics" not in tasks
    logs = run_logs(run, "evaluate failed on purpose")
    assert "toy evaluate failed on purpose: FAIL_EVALUATE exists" in logs
    assert "DVC stage 'evaluate' failed with exit code" in logs
    assert "evaluate" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    # the override is gone again: the next `dvc repro` runs on the parameters the user wrote
    assert (repo / "params.yaml").read_text() == before


def test_a_bad_override_fails_the_run_before_any_stage(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    before = (repo / "params.yaml").read_text()

    cli, run = deployment_run(prefect_server, "train-drin/train-drin",
                              {"repo": str(repo), "overrides": {"top_p": 1.5}, **FAST_RETRY})

    assert cli.returncode != 0 and run.state.is_failed(), f"{run.state}\n{cli.stdout}"
    assert task_runs(run) == {}  # nothing ran
    assert "top_p: must be in (0, 1] or null, got 1.5 (the file is unchanged)" in run_logs(run, "top_p")
    assert (repo / "params.yaml").read_text() == before and not (repo / "dvc.lock").exists()


def test_a_required_remote_that_cannot_be_reached_fails_the_run(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    dvc(repo, "remote", "add", "-d", "store", "s3://nowhere/dvc")
    dvc(repo, "remote", "modify", "--local", "store", "endpointurl", "http://127.0.0.1:9")  # closed port
    params = {"repo": str(repo), "sync_remote": True, "retries": 0, **FAST_RETRY}

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", params)

    assert cli.returncode != 0 and run.state.is_failed(), f"{run.state}\n{cli.stdout}"
    tasks = task_runs(run)
    assert tasks["dvc pull"].state.is_failed() and "acquire" not in tasks  # nothing ran on a missing remote
    logs = run_logs(run, "is not usable")
    assert "DVC remote 'store' (s3://nowhere/dvc) is not usable: " in logs  # no credentials, or no endpoint
    assert "sync_remote=true requires it" in logs


def test_train_vqgan_runs_only_the_first_stages_and_what_they_need(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")

    cli, run = deployment_run(prefect_server, "train-vqgan/train-vqgan",
                              {"repo": str(repo), "overrides": {"vqgan.depth.max_steps": 4}, **FAST_RETRY})

    assert run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{run_logs(run, '')[-4000:]}"
    assert list(task_runs(run)) == ["acquire", "annotate@depth", "train-vqgan@image", "train-vqgan@depth",
                                    "publish metrics"]
    assert (repo / "data/vqgan/depth.txt").read_text() == "depth trained 4 steps\n"
    assert not (repo / "data/samples").exists()


def test_make_prefect_run_takes_the_short_name_and_follows_the_run(prefect_server, served_repo, tmp_path):
    """`prefect deployment run` wants <flow>/<deployment>; `make prefect-run FLOW=name` says it once."""
    repo = make_toy_repo(tmp_path / "toy")
    proc = subprocess.run(["make", "-f", str(REPO_ROOT / "Makefile"), "-o", "install", f"VENV={sys.prefix}",
                           f"PREFECT_PORT={urlsplit(prefect_server.api_url).port}", "prefect-run", "FLOW=train-vqgan",
                           f"PARAMS={json.dumps({'repo': str(repo), **FAST_RETRY})}"],
                          cwd=tmp_path, env=prefect_server.env(COLUMNS="200"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "train-vqgan/train-vqgan" in proc.stdout and "Completed" in proc.stdout
    assert (repo / "data/vqgan/depth.txt").read_text() == "depth trained 3 steps\n"


def test_sample_sweep_collects_every_setting_and_restores_params(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    params_before = (repo / "params.yaml").read_text()

    cli, run = deployment_run(prefect_server, "sample/sample",
                              {"repo": str(repo), "top_k": [5, 9], "top_p": [0.5], **FAST_RETRY})

    assert run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{run_logs(run, '')[-4000:]}"
    table = artifacts(run)["sample-sweep"]
    assert [(row["top_k"], row["top_p"]) for row in table] == [(5, 0.5), (9, 0.5)]
    for row in table:  # each row holds the metrics of its own setting (toy fid = top_k / 10 + top_p)
        assert row["eval.fid"] == pytest.approx(row["top_k"] / 10 + row["top_p"]) and row["eval.top_k"] == row["top_k"]
    grids = sorted((repo / "data/sweeps").glob("*/grid.png"))
    assert [g.parent.name for g in grids] == ["k5-p0.5", "k9-p0.5"]
    assert grids[0].read_bytes() != grids[1].read_bytes()
    shown = artifacts(run)["sample-sweep-grids"]
    assert all(f"base64,{base64.b64encode(g.read_bytes()).decode()})" in shown for g in grids)
    # The workspace is back at the original setting, its outputs recorded.
    assert (repo / "params.yaml").read_text() == params_before
    assert json.loads(dvc(repo, "status", "--json")) == {}
    assert json.loads((repo / "metrics/eval.json").read_text())["top_k"] == 100


def test_a_sweep_with_a_bad_setting_fails_before_sampling(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    before = (repo / "params.yaml").read_text()

    cli, run = deployment_run(prefect_server, "sample/sample", {"repo": str(repo), "top_k": [5, 500], **FAST_RETRY})

    assert run.state.is_failed() and task_runs(run) == {}, f"{run.state}\n{cli.stdout}"
    assert "top_k: 500 is more than the image codebook's 128 entries" in run_logs(run, "top_k: 500")
    assert (repo / "params.yaml").read_text() == before


def test_extract_depth_fans_shards_out_concurrently_and_records_the_stage(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")

    cli, run = deployment_run(prefect_server, "extract-depth/extract-depth",
                              {"repo": str(repo), "num_shards": 3, **FAST_RETRY})

    assert run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{run_logs(run, '')[-4000:]}"
    tasks = task_runs(run)
    shards = [tasks[f"annotate@depth shard {i}/3"] for i in range(3)]
    assert max(t.start_time for t in shards) < min(t.end_time for t in shards), "shards did not overlap"
    assert list(tasks)[-1] == "dvc commit annotate@depth"
    written = {p.name: p.read_text() for p in (repo / "data/depth").iterdir()}
    assert sorted(written) == [f"img{i}.txt" for i in range(6)]
    assert {text.split("shard ")[1].strip() for text in written.values()} == {"0/3", "1/3", "2/3"}
    # Recorded as if `dvc repro annotate@depth` had run: DVC now considers it up to date.
    assert json.loads(dvc(repo, "status", "--json", "annotate@depth")) == {}
    assert "Stage 'annotate@depth' didn't change, skipping" in dvc(repo, "repro", "--single-item", "annotate@depth")


@pytest.mark.slow
def test_train_drin_on_the_smoke_profile_of_the_real_pipeline(prefect_server, served_repo, tmp_path):
    repo = make_smoke_repo(tmp_path / "smoke")
    # The shipped DVC remote is a placeholder bucket, here behind a closed loopback port
    # (as unreachable as it is offline): the default sync mode skips it and the run completes.
    dvc(repo, "remote", "modify", "--local", "storage", "endpointurl", "http://127.0.0.1:9")
    params = {"repo": str(repo), **FAST_RETRY}

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", params, timeout=600)

    logs = run_logs(run, "Updating lock file")
    assert cli.returncode == 0 and run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{logs[-6000:]}"
    stages = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert {"extract", "annotate@depth", "train-vqgan@image", "train-vqgan@depth", "tokenize", "train-transformer",
            "sample", "fid-reference", "evaluate", "evaluate-vqgan"} <= stages
    tasks = task_runs(run)
    assert set(tasks) == stages | {"dvc pull", "publish metrics", "publish grids"}  # no push without the remote
    # no red task: the unusable remote is a skipped pull with its reason, not a failure
    assert all(t.state.is_completed() for t in tasks.values())
    assert tasks["dvc pull"].state.name == "Skipped"
    assert "DVC remote 'storage' (s3://taming-pipeline/dvc) is not usable" in tasks["dvc pull"].state.message
    assert "Traceback" not in logs and "Skipped dvc pull and push" in logs
    assert json.loads(dvc(repo, "status", "--json")) == {}  # every stage recorded by DVC
    assert "Running stage 'train-transformer'" in logs

    # the metrics that matter, rounded, in the order of `dvc metrics show`
    vqgan = json.loads((repo / "metrics/summary/vqgan.json").read_text())
    published = artifacts(run)
    assert [(row["file"], row["metric"]) for row in published["train-drin-metrics"]] == [
        ("metrics/summary/samples.json", "fd_random_inception.samples"),
        *[("metrics/summary/vqgan.json", key) for key in ("colourfulness_ratio.image",
                                                          "fd_random_inception.reconstruction", "psnr.depth",
                                                          "psnr.image", "ssim.depth", "ssim.image", "usage.depth",
                                                          "usage.image")]]
    assert {"file": "metrics/summary/vqgan.json", "metric": "usage.image", "value": vqgan["usage"]["image"]} \
        in published["train-drin-metrics"]

    # the sample grid, as a picture in the Prefect UI (a real browser against the real server)
    grid = repo / "data/samples/grid.png"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"base64,{base64.b64encode(grid.read_bytes()).decode()})" in published["train-drin-samples"]
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]), key=ArtifactFilterKey(any_=["train-drin-samples"])))
    with Chromium(tmp_path / "chromium") as browser:
        browser.goto(f"{prefect_server.api_url.removesuffix('/api')}/artifacts/artifact/{artifact.id}")
        shown = "Array.from(document.images).find(i => i.src.startsWith('data:image/png') && i.naturalWidth > 0)"
        assert browser.wait_for(f"!!{shown}"), "the UI shows no picture in the artifact"
        x, y, width, height = browser.evaluate(
            f"(() => {{ const i = {shown}; i.scrollIntoView(); const r = i.getBoundingClientRect();"
            f" return [r.x, r.y, r.width, r.height]; }})()")
        screen = browser.screenshot()
    picture = np.asarray(Image.open(grid).convert("RGB").resize((round(width), round(height))), dtype=float)
    on_screen = np.asarray(screen.crop((round(x), round(y), round(x + width), round(y + height))), dtype=float)
    assert width >= 100 and np.abs(on_screen - picture).mean() < 12, "the page does not show the grid"
