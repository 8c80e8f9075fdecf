"""The sampling app (app/sampling_app.py): its logic through Streamlit's AppTest, and the real
thing served by `streamlit run` on loopback, driven by a headless Chromium (the Debian
package, through selenium and chromedriver): start a sample, wait for the picture, take a
screenshot and check it shows one."""
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tasks.data.formats import save_depth_png

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "sampling_app.py"


@pytest.fixture(scope="module")
def drin(reference_dir):
    return str(Path(reference_dir) / "taming_small" / "drin_transformer")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """Example depth maps laid out as the pipeline's data/depth/validation/<synset>/<name>.png."""
    root = tmp_path_factory.mktemp("examples")
    for k in range(2):
        ramp = np.linspace(0.1, 1.0, 32, dtype=np.float32)[:, None] * np.ones((1, 40), np.float32)
        save_depth_png(root / f"n0900000{k}" / f"val_{k}.png", ramp ** (k + 1))
    return root


@pytest.fixture(scope="module")
def class_model(tmp_path_factory, drin):
    """The D-RIN weights re-read as a 3-class model (the GPT does not care what its prefix means)."""
    folder = tmp_path_factory.mktemp("cls") / "cls_model"
    shutil.copytree(drin, folder)
    config_path = next((folder / "configs").glob("*.yaml"))
    config = yaml.safe_load(config_path.read_text())
    config["model"]["params"].update(cond_stage_key="class_label", cond_stage_config={
        "target": "taming.modules.util.Labelator", "params": {"n_classes": 3}})
    config_path.write_text(yaml.safe_dump(config))
    return str(folder)


@pytest.fixture(scope="module")
def coord_model(tmp_path_factory, drin):
    """The D-RIN weights re-read as a coordinate-conditioned model, FacesHQ's kind (CoordStage on
    the 8 x 8 token grid; the GPT's 64 condition positions now hold coordinates)."""
    folder = tmp_path_factory.mktemp("coord") / "coord_model"
    shutil.copytree(drin, folder)
    config_path = next((folder / "configs").glob("*.yaml"))
    config = yaml.safe_load(config_path.read_text())
    config["model"]["params"].update(cond_stage_key="coord", cond_stage_config={
        "target": "taming.modules.misc.coord.CoordStage", "params": {"n_embed": 64, "down_factor": 4}})
    config_path.write_text(yaml.safe_dump(config))
    return str(folder)


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run where the app's default model (data/transformer) does not exist, whatever this checkout holds."""
    monkeypatch.chdir(tmp_path)


def app_test():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=300)


def result(at) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(at.session_state["result"])))


def test_app_samples_a_depth_model_from_an_example_map(drin, examples):
    at = app_test()
    at.run()
    assert at.error and "cannot load" in at.error[0].value      # data/transformer: not in this checkout
    at.sidebar.text_input(key="model").set_value(drin).run()
    assert not at.error and "conditioned on depth" in at.sidebar.caption[0].value
    at.text_input(key="examples").set_value(str(examples)).run()
    assert [str(p) for p in at.selectbox(key="example").options] == ["n09000000/val_0.png", "n09000001/val_1.png"]
    assert not at.button(key="sample").disabled
    at.button(key="sample").click().run()
    assert not at.error and result(at).shape == (32, 32, 3)
    first = result(at)
    assert at.download_button(key="download").label == "Download PNG"
    # the same seed again: the same picture; another seed: another one
    at.button(key="sample").click().run()
    assert np.array_equal(result(at), first)
    at.sidebar.number_input(key="seed").set_value(5).run()
    at.button(key="sample").click().run()
    assert not np.array_equal(result(at), first)
    # a landscape by sliding window
    at.sidebar.number_input(key="width").set_value(64).run()
    assert "sliding-window sampling over 8x16 tokens" in " ".join(c.value for c in at.caption)
    at.button(key="sample").click().run()
    assert result(at).shape == (32, 64, 3)
    # guidance is offered only to models trained with condition dropout
    assert at.sidebar.slider(key="guidance").disabled


def test_app_classes_are_searchable_and_sampled(class_model):
    at = app_test()
    at.run()
    at.sidebar.text_input(key="model").set_value(class_model).run()
    box = at.selectbox(key="class")
    assert box.options == ["0: class 0", "1: class 1", "2: class 2"]
    box.set_value(2).run()
    at.sidebar.number_input(key="top_k").set_value(5).run()
    at.button(key="sample").click().run()
    assert not at.error and result(at).shape == (32, 32, 3)
    assert at.session_state["result_name"] == "cls_model-2-seed0.png"


def test_app_samples_a_coordinate_model_larger_than_its_training_size(coord_model):
    at = app_test()
    at.run()
    at.sidebar.text_input(key="model").set_value(coord_model).run()
    assert not at.error and "conditioned on coord" in at.sidebar.caption[0].value
    assert "Conditioned on coordinates" in " ".join(c.value for c in at.caption)
    at.button(key="sample").click().run()
    assert not at.error and result(at).shape == (32, 32, 3)
    at.sidebar.number_input(key="width").set_value(64).run()
    at.sidebar.number_input(key="height").set_value(48).run()
    at.button(key="sample").click().run()
    assert not at.error and result(at).shape == (48, 64, 3)


def test_app_names_a_bad_setting(drin, examples):
    at = app_test()
    at.run()
    at.sidebar.text_input(key="model").set_value(drin).run()
    at.text_input(key="examples").set_value(str(tmp := examples / "none")).run()
    assert f"no PNG maps under {tmp}" in at.warning[0].value and at.button(key="sample").disabled
    at.sidebar.text_input(key="model").set_value(str(examples)).run()
    assert "checkpoint not found" in at.error[0].value


# ----------------------------------------------------------------------------- a real browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_app(drin, examples, tmp_path):
    """`streamlit run` on a free loopback port, as `make app` starts it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none",
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--server.headless", "true",
                             "--client.toolbarMode", "viewer", "--",
                             "--model", drin, "--examples", str(examples)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
            assert time.monotonic() < deadline, "streamlit did not answer in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "the browser test needs Debian's chromium and chromium-driver (.ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={Path(os.environ.get('TMPDIR', '/tmp')) / f'chromium-{os.getpid()}'}")
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.timeout(600)
def test_a_real_browser_samples_and_shows_the_picture(served_app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chromium()
    try:
        browser.get(served_app)
        wait = WebDriverWait(browser, 240)
        button = wait.until(ready.element_to_be_clickable(
            (By.XPATH, "//button[.//p[normalize-space()='Sample']]")))
        button.click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stDownloadButton']")))
        picture = wait.until(ready.visibility_of_element_located(
            (By.XPATH, "//*[@data-testid='stImage'][.//*[contains(., 'sample, 32x32 px')]]//img")))
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", picture)
        time.sleep(1)  # let the image finish painting
        browser.save_screenshot(str(tmp_path / "app.png"))
        shot = np.asarray(Image.open(io.BytesIO(picture.screenshot_as_png)).convert("RGB")).astype(float)
    finally:
        browser.quit()
    assert Image.open(tmp_path / "app.png").size[0] > 0
    assert shot.shape[0] >= 300 and shot.shape[1] >= 300          # the sample, enlarged for display
    assert shot.std() > 10, "the sampled picture is blank"          # a picture, not one flat colour
