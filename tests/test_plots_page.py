"""`dvc plots show` pages render their charts without the internet: .dvc/config names the
template in assets/plots/, which carries vega, vega-lite and vega-embed inline. A real
headless Chromium that can reach no host renders a page of DVCLive curves and images; the
same page on DVC's own template (scripts from a CDN) renders no chart there."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from browser import Chromium
from fixtures_pipeline import REPO_ROOT

LOG = """\
import numpy as np
from dvclive import Live

with Live("dvclive", save_dvc_exp=False, dvcyaml=False) as live:
    for step in range(5):
        live.log_metric("train/loss", 1 / (step + 1))
        live.log_metric("val/psnr", 10 + step)
        live.next_step()
    live.log_image("grid.png", np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8))
"""

DVC_YAML = """\
plots:
  - dvclive/plots/metrics: {x: step}
  - dvclive/plots/images
"""


def sh(cwd, *cmd) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """A DVC project with the repository's .dvc/config and assets/plots, and DVCLive's files."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    sh(repo, "git", "init", "-q")
    sh(repo, sys.executable, "-m", "dvc", "init", "-q")
    shutil.copyfile(REPO_ROOT / ".dvc/config", repo / ".dvc/config")
    shutil.copytree(REPO_ROOT / "assets/plots", repo / "assets/plots")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "plots")
    sh(repo, sys.executable, "-c", LOG)
    return repo


def rendered(browser: Chromium, page, wait_s: float) -> tuple[int, int]:
    """(vega charts the page embeds, those drawn on a canvas of a real size), after at most ``wait_s``."""
    expected = page.read_text().count("vegaEmbed('#")  # one call per chart; vega-embed replaces it by the chart
    browser.goto(page.as_uri())
    drawn = "Array.from(document.querySelectorAll('canvas.marks')).filter(c => c.width > 50 && c.height > 50).length"
    browser.wait_for(f"{drawn} >= {expected}", timeout=wait_s)
    return expected, browser.evaluate(drawn)


def test_plots_page_renders_charts_offline(plots_repo, tmp_path):
    shown = sh(plots_repo, sys.executable, "-m", "dvc", "plots", "show", "-o", "page")
    page = plots_repo / "page" / "index.html"
    assert page.as_uri() in shown
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and "vega-lite 5." in html  # the shipped template, not DVC's

    # the control: DVC's own template, which loads the scripts from a CDN
    sh(plots_repo, sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", "")
    sh(plots_repo, sys.executable, "-m", "dvc", "plots", "show", "-o", "cdn")
    assert "cdn.jsdelivr" in (plots_repo / "cdn" / "index.html").read_text()

    with Chromium(tmp_path / "chromium") as browser:
        expected, drawn = rendered(browser, page, wait_s=60)
        assert expected == 2 and drawn == expected  # train/loss and val/psnr, each a drawn chart
        assert browser.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")
        shot = np.asarray(browser.screenshot())
        assert (shot < 200).any(axis=2).mean() > 0.01  # lines, axes and text, not a blank page
        assert rendered(browser, plots_repo / "cdn" / "index.html", wait_s=10) == (2, 0)  # offline, the CDN page has none
