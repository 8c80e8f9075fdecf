"""Progress that reads right in a log file: plain lines with count, rate and ETA."""
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import time
    from tasks.runtime.progress import progress
    for _ in progress(range(5), desc="work", unit="item"):
        time.sleep(0.05)
""")


def test_progress_in_a_log_is_one_line_per_report_with_rate_and_eta():
    env = {**os.environ, "PYTHONPATH": REPO, "TAMING_PROGRESS_SECONDS": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "\r" not in done.stderr and len(lines) >= 2
    assert lines[0].startswith("work:   0%") and "0/5" in lines[0]
    assert lines[-1].startswith("work: 100%") and "5/5" in lines[-1] and "item/s" in lines[-1]
    assert all("<" in line for line in lines[1:])  # elapsed<remaining: the ETA
