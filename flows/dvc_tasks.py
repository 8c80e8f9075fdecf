"""DVC stages as Prefect tasks.

A flow never runs stage code itself: each task calls ``dvc repro --single-item
<stage>``, so ``dvc.lock`` stays the record of what ran on which inputs, and a
stage whose inputs did not change is a fast no-op (or a checkout from DVC's
run-cache). The stage graph comes from DVC (``dvc dag --dot``); ``dvc.yaml``
stays its only definition.

Stage output is streamed line by line into the run's logs; a failing command
raises ``CommandFailed`` carrying its last lines, so the error is in the
task's state message and in the flow run's logs.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.states import Completed
from prefect.tasks import exponential_backoff

DVC = [sys.executable, "-m", "dvc"]  # the DVC installed beside this interpreter
TAIL_LINES = 30  # lines of a failed command's output kept in its error


class CommandFailed(RuntimeError):
    """A stage (or DVC) command exited with a non-zero status."""


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow/task run's logger (its lines go to the Prefect API); a plain logger
    when these helpers are called outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flows")


def resolve_repo(repo: str | os.PathLike) -> Path:
    path = Path(repo).expanduser().resolve()
    if not (path / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{path}: no dvc.yaml here; pass repo=<path of the taming-pipeline checkout>")
    return path


def child_env() -> dict[str, str]:
    """Environment of stage commands: this venv's scripts (taming, dvc) first on PATH,
    unbuffered Python so output streams as it is printed, tqdm refreshing rarely
    because every refresh becomes a log line."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("TQDM_MININTERVAL", "10")
    # As `make push` / `make pull`: S3-compatible stores reject botocore >= 1.36's
    # default checksums (README, "Sharing through S3").
    env.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    env.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    return env


def stream(cmd: list[str] | str, cwd: Path, what: str) -> None:
    """Run ``cmd`` (a list, or a shell string), logging each output line as it arrives.

    The command gets its own process group, so that when the run is cancelled or
    interrupted (Prefect raises in this thread), the stage and everything it started
    stop too, instead of running on orphaned and holding DVC's lock on the repo."""
    logger = run_logger()
    logger.info("$ %s", cmd if isinstance(cmd, str) else " ".join(map(str, cmd)))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), shell=isinstance(cmd, str), text=True, errors="replace",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for line in proc.stdout:  # universal newlines: tqdm's '\r' updates end lines too
            line = line.rstrip()
            if line:
                (logger.error if line.startswith("ERROR") else logger.info)(line)
                tail.append(line)
        proc.wait()
    except BaseException:
        stop_process_group(proc)
        raise
    finally:
        proc.stdout.close()
    if proc.returncode != 0:
        raise CommandFailed(f"{what} failed with exit code {proc.returncode}; last output:\n" + "\n".join(tail))


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the process group ``proc`` leads (started with start_new_session), give the
    whole group ``grace_s`` to exit, then SIGKILL whatever is left of it. Returns when no
    live process of the group remains: the leader often exits first while what it started
    (a stage, a server's workers) is still stopping, or ignores SIGTERM."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    if not _wait_for_group(proc, grace_s):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_for_group(proc, grace_s)  # a process in uninterruptible sleep dies when it wakes
    proc.wait()


def _wait_for_group(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether the group ``proc`` leads has no live process left within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        proc.poll()  # reap the leader: our own zombie would keep the group alive
        if not _group_alive(proc.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a process that is not a zombie (orphans' zombies
    stay until init reaps them; on Linux /proc tells them apart, elsewhere they count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc_root = Path("/proc")
    if not (proc_root / "self" / "stat").exists():
        return True
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def dvc_output(repo: Path, *args: str) -> str:
    """Run a DVC query command and return its stdout; errors carry DVC's message."""
    proc = subprocess.run([*DVC, *args], cwd=repo, env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandFailed(f"dvc {' '.join(args)} in {repo} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# --- the stage graph ---------------------------------------------------------------

_NODE = re.compile(r'^"(?P<name>[^"]+)";$')
_EDGE = re.compile(r'^"(?P<src>[^"]+)" -> "(?P<dst>[^"]+)";$')


def stage_order(repo: Path, targets: Iterable[str] | None = None) -> list[str]:
    """Stages (foreach items expanded, e.g. ``train-vqgan@image``) in an order DVC can
    run them: every stage after the stages it depends on; ties keep dvc.yaml's order.
    With ``targets``, only those stages (a foreach group name selects all its items)
    and everything upstream of them."""
    nodes: dict[str, set[str]] = {}  # stage -> the stages it depends on; dict keeps file order
    for target in list(targets or []) or [None]:
        dot = dvc_output(repo, "dag", "--dot", *([target] if target else []))
        for line in map(str.strip, dot.splitlines()):
            if m := _NODE.match(line):
                nodes.setdefault(m["name"], set())
            elif m := _EDGE.match(line):  # DVC draws dependency -> dependent
                nodes.setdefault(m["dst"], set()).add(m["src"])
    order: list[str] = []
    while len(order) < len(nodes):
        ready = next(s for s, deps in nodes.items() if s not in order and deps <= set(order))
        order.append(ready)
    return order


def stage_matches(stage: str, name: str) -> bool:
    """``train-vqgan@image`` matches ``train-vqgan`` (its foreach group) and itself."""
    return stage == name or stage.startswith(name + "@")


# --- parameters -----------------------------------------------------------------

PARAMS_FILE = "params.yaml"


def apply_overrides(repo: Path, overrides: Mapping[str, Any], check_only: bool = False) -> list[str]:
    """Set parameters ({dotted key: value}, e.g. ``{"top_k": 250}``) in the repo's params.yaml.

    The whole resulting file is validated first (tasks/config/params.py: unknown keys,
    ranges, a top_k above the codebook), so a bad value fails here, before any stage,
    and the file stays as it was; only the changed values' text is rewritten (comments,
    flow-style mappings and nulls stay: tasks/config/edit.py)."""
    from tasks.config.edit import set_params
    from tasks.config.typed import ConfigError

    items = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if not items:
        return items
    try:
        set_params(repo / PARAMS_FILE, overrides, write=not check_only)
    except ConfigError as e:
        raise ConfigError(f"{repo / PARAMS_FILE}: cannot set {', '.join(items)}: {e} (the file is unchanged)") from None
    if not check_only:
        run_logger().info("set in %s: %s", PARAMS_FILE, ", ".join(items))
    return items


def params_restored(repo: Path, overrides: Mapping[str, Any] | None, always: bool = False):
    """While runs change params.yaml: put it back when the run fails (or ``always`` at the end)."""
    from tasks.config.edit import restoring

    return restoring(repo / PARAMS_FILE, always=always) if overrides or always else contextlib.nullcontext()


# --- metrics --------------------------------------------------------------------

def read_metrics(repo: Path) -> dict[str, dict[str, Any]]:
    """The workspace's metrics (``dvc metrics show``): ``{file: {"dotted.key": value}}``."""
    shown = json.loads(dvc_output(repo, "metrics", "show", "--json") or "{}")
    metrics: dict[str, dict[str, Any]] = {}
    for path, entry in shown.get("", {}).get("data", {}).items():
        if "error" in entry:
            run_logger().warning("metrics file %s unreadable: %s", path, entry["error"])
            continue
        metrics[path] = {}
        _flatten(entry.get("data", {}), "", metrics[path])
    return metrics


def metric_columns(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One flat row: ``samples.fid`` (file stem + key), or the file's whole path
    without its suffix where stems repeat (``data/dvclive/vqgan/image/metrics.step``)."""
    stems = collections.Counter(Path(path).stem for path in metrics)
    return {f"{Path(path).stem if stems[Path(path).stem] == 1 else str(Path(path).with_suffix(''))}.{key}": value
            for path, values in metrics.items() for key, value in values.items()}


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = node


# --- tasks ----------------------------------------------------------------------

def retry_options(retries: int, retry_delay_seconds: float) -> dict[str, Any]:
    """Task options for retrying transient failures: delays d, 2d, 4d, ... with jitter."""
    return dict(retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_seconds),
                retry_jitter_factor=0.5)


@task(task_run_name="{stage}")
def repro_stage(repo: Path, stage: str) -> None:
    """Reproduce one stage (not its upstream: the flow runs those as their own tasks)."""
    stream([*DVC, "repro", "--single-item", stage], repo, f"DVC stage {stage!r}")


SHARE = [sys.executable, "-m", "tasks.cli", "share"]  # `taming share`: DVC push/pull with the run-cache's outputs


class RemoteUnavailable(RuntimeError):
    """The DVC remote is not configured, not reachable, or refuses our credentials."""


def remote_problem(repo: Path) -> str | None:
    """Why the repo's default DVC remote cannot be used right now, in one line; None if it can.

    Lists the remote's top folder: that needs its endpoint, its bucket and valid credentials,
    as a pull would, but transfers nothing."""
    from dvc.repo import Repo

    name = url = None
    try:
        with Repo(str(repo)) as dvc_repo:
            name = dvc_repo.config["core"].get("remote")
            url = dvc_repo.config["remote"].get(name, {}).get("url") if name else None
            odb = dvc_repo.cloud.get_remote_odb(None, "pull")
            odb.fs.ls(odb.path, detail=False)
    except FileNotFoundError:  # reachable, and nothing pushed there yet
        return None
    except Exception as e:  # noqa: BLE001 - whatever stops the remote is the reason to report
        reason = " ".join(str(e).split()) or type(e).__name__
        where = f"DVC remote {name!r} ({url})" if name else "DVC remote"
        return f"{where} is not usable: {reason}"
    return None


@task(task_run_name="dvc pull")
def pull(repo: Path, required: bool):
    """Fetch what the remote holds, with the run-cache and its outputs (`taming share pull`):
    stages someone else already ran are checked out instead of run. An unusable remote is
    an error when ``required``; otherwise the task is Skipped with the reason."""
    if problem := remote_problem(repo):
        if required:
            raise RemoteUnavailable(f"{problem}. sync_remote=true requires it (README, 'Sharing through S3').")
        message = (f"{problem}. Skipped dvc pull and push: stages compute what they need and results stay "
                   f"local (set up the remote: README, 'Sharing through S3'; `make push` later).")
        get_run_logger().warning(message)
        return Completed(name="Skipped", message=message)
    stream([*SHARE, "pull"], repo, "dvc pull")


@task(task_run_name="dvc push")
def push(repo: Path) -> None:
    try:
        stream([*SHARE, "push"], repo, "dvc push")
    except CommandFailed as e:
        raise CommandFailed(f"{e}\nEvery stage finished and dvc.lock records it; only sharing failed. Fix the remote "
                            "(README, 'Sharing through S3') and run `make push`.") from None


def has_remote(repo: Path) -> bool:
    return bool(dvc_output(repo, "remote", "list").strip())


def pull_if_remote(repo: Path, sync_remote: bool | None) -> bool:
    """``dvc pull`` when a remote is configured; True if the run should push at the end.

    ``sync_remote``: None (auto, the default) syncs when a remote is configured and usable,
    and skips both steps with a warning when it is not (offline, no credentials, the shipped
    placeholder): DVC computes what it could not fetch and the results stay local. True
    makes the remote required (an unusable remote, a failed pull or push fails the run);
    False turns syncing off."""
    logger = get_run_logger()
    if sync_remote is False or not has_remote(repo):
        logger.info("no DVC remote sync: %s", "disabled (sync_remote=false)" if sync_remote is False
                    else "no remote configured")
        return False
    state = pull(repo, required=bool(sync_remote), return_state=True)
    if state.is_failed():
        if sync_remote:
            state.result()  # raises the pull's error: the remote was required
        logger.warning("dvc pull failed (see its log above); continuing without the remote: stages compute "
                       "what is missing and nothing is pushed (`make push` later; sync_remote=true requires it)")
        return False
    return state.name != "Skipped"


def push_if_pulled(repo: Path, pushing: bool, sync_remote: bool | None, opts: dict[str, Any]) -> None:
    """Push the run's results after a successful pull; in auto mode a failed push is a warning."""
    if not pushing:
        return
    state = push.with_options(**opts)(repo, return_state=True)
    if state.is_failed():
        if sync_remote:
            state.result()
        get_run_logger().warning("dvc push failed (see its log above): the results are complete but only local; "
                                 "fix the remote and run `make push` (sync_remote=true makes this an error)")


def reproduce(repo: Path, targets: Iterable[str] | None, *, sync_remote: bool | None, retries: int,
              retry_delay_seconds: float) -> list[str]:
    """Pull (if a remote is configured), run the stages of ``targets`` (all stages when
    None) one task each in dependency order, push. Returns the stages run."""
    opts = retry_options(retries, retry_delay_seconds)
    pushing = pull_if_remote(repo, sync_remote)
    stages = stage_order(repo, targets)
    get_run_logger().info("%d stages, in order: %s", len(stages), ", ".join(stages))
    for stage in stages:
        repro_stage.with_options(**opts)(repo, stage)
    push_if_pulled(repo, pushing, sync_remote, opts)
    return stages
