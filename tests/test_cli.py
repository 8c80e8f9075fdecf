"""The `taming` command: help for every stage, clear errors, cheap imports."""
import os
import subprocess
import sys

import pytest

from tasks.cli import STAGES, main

REQUIRED = ["acquire", "extract", "annotate", "source-maps", "train-vqgan", "tokenize", "train-transformer", "sample",
            "fid-reference", "evaluate", "evaluate-vqgan", "weights", "publish"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], capture_output=True, text=True)


def test_top_level_help_lists_every_stage():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for name in REQUIRED:
        assert f"  {name} " in out.stdout, f"{name} missing from taming --help"


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "taming")
    exe = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert exe.returncode == 0 and "train-transformer" in exe.stdout


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    assert f"taming {stage}" in capsys.readouterr().out


def test_unknown_stage_is_a_clear_error():
    out = run_cli("nonsense")
    assert out.returncode == 2
    assert "unknown stage 'nonsense'" in out.stderr


def test_importing_models_stays_light():
    # models/ is pure torch: no orchestration or pipeline machinery at import time
    code = ("import sys, models; heavy = [m for m in ('prefect', 'dvc', 'lightning', 'boto3') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_cli_stays_light():
    code = "import sys, tasks.cli; print([m for m in ('torch', 'prefect', 'dvc') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
