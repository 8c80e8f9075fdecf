"""Prefect flows end to end: a real server on loopback, the deployments served by
``python -m flows.deployments`` in a subprocess, runs triggered with the
``prefect`` CLI exactly as a user types them, and real DVC underneath.

Most runs use a toy DVC project with the real pipeline's shape
(tests/toy_dvc_project.py), so a run takes seconds; the last test runs the
real pipeline on the smoke profile (a couple of minutes).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from fixtures_pipeline import make_smoke_repo
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound
from toy_dvc_project import make_toy_repo

from flows.dvc_tasks import CommandFailed, apply_overrides, stage_order, stop_process_group, stream

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


def test_overrides_are_written_as_dvc_exp_run_set_param_writes_them(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    apply_overrides(repo, {"top_k": 250, "train.steps": 5, "evaluate.fail": True, "+sample_note": "a b"})
    text = (repo / "params.yaml").read_text()
    assert "top_k: 250     # sampling: keep the k most likely tokens" in text  # layout and comments kept
    assert "# Toy parameters. Comments must survive overrides.\n" in text and "# true makes evaluate fail" in text
    params = yaml.safe_load(text)
    assert (params["top_k"], params["train"]["steps"], params["sample_note"]) == (250, 5, "a b")
    with pytest.raises(ValueError, match=r"params.yaml: cannot apply top_kk=1.*top_kk"):
        apply_overrides(repo, {"top_kk": 1})  # a typo is refused, not added


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
    assert (repo / "data/samples/grid.png").as_uri() in published["train-drin-samples"]



def test_a_stage_that_keeps_failing_fails_the_run_with_its_error(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    params = {"repo": str(repo), "overrides": {"evaluate.fail": True}, "retries": 1, **FAST_RETRY}

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", params)

    assert cli.returncode != 0 and run.state.is_failed(), f"{run.state}\n{cli.stdout}"
    tasks = task_runs(run)
    assert tasks["sample"].state.is_completed()
    assert tasks["evaluate"].state.is_failed() and tasks["evaluate"].run_count == 2  # retried once, then given up
    assert "publish metrics" not in tasks
    logs = run_logs(run, "evaluate failed on purpose")
    assert "toy evaluate failed on purpose: evaluate.fail is true" in logs
    assert "DVC stage 'evaluate' failed with exit code" in logs
    assert "evaluate" not in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def test_a_required_remote_that_cannot_be_reached_fails_the_run(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    dvc(repo, "remote", "add", "-d", "store", "s3://nowhere/dvc")
    dvc(repo, "remote", "modify", "--local", "store", "endpointurl", "http://127.0.0.1:9")  # closed port
    params = {"repo": str(repo), "sync_remote": True, "retries": 0, **FAST_RETRY}

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", params)

    assert cli.returncode != 0 and run.state.is_failed(), f"{run.state}\n{cli.stdout}"
    tasks = task_runs(run)
    assert tasks["dvc pull"].state.is_failed() and "acquire" not in tasks  # nothing ran on a missing remote
    assert "dvc pull failed with exit code" in run_logs(run, "dvc pull failed")


def test_train_vqgan_runs_only_the_first_stages_and_what_they_need(prefect_server, served_repo, tmp_path):
    repo = make_toy_repo(tmp_path / "toy")

    cli, run = deployment_run(prefect_server, "train-vqgan/train-vqgan",
                              {"repo": str(repo), "overrides": {"train.steps": 4}, **FAST_RETRY})

    assert run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{run_logs(run, '')[-4000:]}"
    assert list(task_runs(run)) == ["acquire", "annotate@depth", "train-vqgan@image", "train-vqgan@depth",
                                    "publish metrics"]
    assert (repo / "data/vqgan/depth.txt").read_text() == "depth trained 4 steps\n"
    assert not (repo / "data/samples").exists()


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
    assert all(g.as_uri() in artifacts(run)["sample-sweep-grids"] for g in grids)
    # The workspace is back at the original setting, its outputs recorded.
    assert (repo / "params.yaml").read_text() == params_before
    assert json.loads(dvc(repo, "status", "--json")) == {}
    assert json.loads((repo / "metrics/eval.json").read_text())["top_k"] == 100


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
    # (as unreachable as it is offline): the default sync mode warns and the run completes.
    dvc(repo, "remote", "modify", "--local", "storage", "endpointurl", "http://127.0.0.1:9")
    params = {"repo": str(repo), **FAST_RETRY}

    cli, run = deployment_run(prefect_server, "train-drin/train-drin", params, timeout=600)

    logs = run_logs(run, "Updating lock file")
    assert cli.returncode == 0 and run.state.is_completed(), f"{run.state}\n{cli.stdout}\n{logs[-6000:]}"
    stages = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert {"extract", "annotate@depth", "train-vqgan@image", "train-vqgan@depth", "tokenize", "train-transformer",
            "sample", "fid-reference", "evaluate", "evaluate-vqgan"} <= stages
    tasks = task_runs(run)
    assert set(tasks) == stages | {"dvc pull", "publish metrics", "publish grids"}  # no push after a failed pull
    assert json.loads(dvc(repo, "status", "--json")) == {}  # every stage recorded by DVC
    assert "Running stage 'train-transformer'" in logs
    assert "dvc pull failed" in logs and "nothing is pushed" in logs

    grid = repo / "data/samples/grid.png"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    published = artifacts(run)
    assert grid.as_uri() in published["train-drin-samples"]
    codebook = json.loads((repo / "metrics/codebook.json").read_text())
    row = {"file": "metrics/codebook.json", "metric": "image.usage", "value": codebook["image"]["usage"]}
    assert row in published["train-drin-metrics"]
