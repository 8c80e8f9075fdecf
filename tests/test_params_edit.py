"""Overrides keep params.yaml intact: the whole result is validated before anything is
written, only the changed values' text changes, and a failed run puts the file back
(tasks/config/edit.py); ``taming exp run`` brings the same to ``dvc exp run -S``."""
from __future__ import annotations

import difflib
import json
import re
import subprocess
import sys

import pytest
import yaml
from fixtures_pipeline import REPO_ROOT
from toy_dvc_project import make_toy_repo

from tasks.config.edit import restoring, set_params
from tasks.config.typed import ConfigError


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    return path


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """(old line, new line) pairs of a same-length edit; added lines as ("", new)."""
    diff = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:2] in ("- ", "+ ")]
    removed, added = [d[2:] for d in diff if d[0] == "-"], [d[2:] for d in diff if d[0] == "+"]
    return list(zip(removed + [""] * (len(added) - len(removed)), added))


def test_only_the_changed_values_change(params):
    before = params.read_text()
    changes = {"top_k": 250, "top_p": 0.9, "sample.classes": [1, 2], "transformer.betas": [0.9, 0.99],
               "vqgan.image.ddconfig.ch": 64, "vqgan.image.quantizer.beta": 0.3, "evaluate.rfid_images": None}
    set_params(params, changes)
    after = params.read_text()
    assert changed_lines(before, after) == [
        ("top_k: 100            # keep the k most likely tokens (null: all)",
         "top_k: 250            # keep the k most likely tokens (null: all)"),
        ("top_p: null           # nucleus: smallest set holding this probability mass (null: off)",
         "top_p: 0.9            # nucleus: smallest set holding this probability mass (null: off)"),
        ("    ddconfig: {double_z: false, z_channels: 32, ch: 32, ch_mult: [1, 2, 2], num_res_blocks: 1,",
         "    ddconfig: {double_z: false, z_channels: 32, ch: 64, ch_mult: [1, 2, 2], num_res_blocks: 1,"),
        ("    quantizer: {quantizer: ema}", "    quantizer: {quantizer: ema, beta: 0.3}"),
        ("  betas: [0.9, 0.95]", "  betas: [0.9, 0.99]"),
        ("  classes: null       # only depth maps of these class labels (null: any)",
         "  classes: [1, 2]     # only depth maps of these class labels (null: any)"),
        ("  rfid_images: 64     # validation images in the reconstruction FID (null: all); PSNR, SSIM, codebook: all",
         "  rfid_images: null   # validation images in the reconstruction FID (null: all); PSNR, SSIM, codebook: all"),
    ]
    expected = yaml.safe_load(before)
    expected.update(top_k=250, top_p=0.9)
    expected["sample"]["classes"], expected["transformer"]["betas"] = [1, 2], [0.9, 0.99]
    expected["vqgan"]["image"]["ddconfig"]["ch"], expected["vqgan"]["image"]["quantizer"]["beta"] = 64, 0.3
    expected["evaluate"]["rfid_images"] = None
    assert yaml.safe_load(after) == expected


def test_keys_the_file_lacks_are_added_in_their_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("top_k: 5\nvqgan:\n  image: {n_embed: 16}   # tiny\n  depth:\n    n_embed: 8\nsample:\n")
    # a partial file: only the text editing is under test here, not the pipeline's schema
    set_params(path, {"vqgan.depth.max_steps": 7, "vqgan.image.max_steps": 9, "sample.seed": 3, "top_p": 0.5},
               validate=dict)
    assert path.read_text() == ("top_k: 5\nvqgan:\n  image: {n_embed: 16, max_steps: 9}   # tiny\n  depth:\n"
                                "    n_embed: 8\n    max_steps: 7\nsample: {seed: 3}\ntop_p: 0.5\n")


@pytest.mark.parametrize("changes, message", [
    ({"top_p": 1.5}, "top_p: must be in (0, 1] or null, got 1.5"),
    ({"top_kk": 5}, "unknown parameter(s): top_kk"),
    ({"top_k": 257}, "top_k: 257 is more than the image codebook's 256 entries"),
    ({"sample.bogus": 1}, "unknown parameter(s): sample.bogus"),
    ({"top_k.x": 1}, "top_k.x: top_k is not a section"),
])
def test_a_bad_value_is_refused_and_nothing_is_written(params, changes, message):
    before = params.read_bytes()
    with pytest.raises(ConfigError, match=re.escape(message)):
        set_params(params, changes)
    assert params.read_bytes() == before


def test_restoring_puts_the_text_back_when_the_block_fails(params):
    before = params.read_text()
    with pytest.raises(RuntimeError), restoring(params):
        set_params(params, {"top_k": 7})
        raise RuntimeError("the run failed")
    assert params.read_text() == before
    with restoring(params):
        set_params(params, {"top_k": 7})
    assert "top_k: 7 " in params.read_text()  # kept when the block succeeds


def taming(repo, *args):
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], cwd=repo, capture_output=True, text=True,
                          timeout=600)


def experiments(repo) -> list[dict]:
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout
    return [exp for rev in json.loads(shown) for exp in (rev.get("experiments") or [])]


def test_taming_exp_run_checks_first_keeps_the_layout_and_restores_on_failure(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    original = (repo / "params.yaml").read_text()

    bad = taming(repo, "exp", "run", "-S", "top_p=1.5")
    assert bad.returncode == 2 and "taming exp: invalid parameters: top_p: must be in (0, 1]" in bad.stderr
    assert (repo / "params.yaml").read_text() == original and not (repo / "dvc.lock").exists()

    ran = taming(repo, "exp", "run", "-S", "top_k=7", "-S", "vqgan.depth.max_steps=4")
    assert ran.returncode == 0, ran.stderr
    assert (repo / "params.yaml").read_text() == original.replace("top_k: 100     #", "top_k: 7       #").replace(
        "depth: {max_steps: 3,", "depth: {max_steps: 4,")
    assert json.loads((repo / "metrics/eval.json").read_text())["top_k"] == 7
    assert len(experiments(repo)) == 1

    (repo / "FAIL_EVALUATE").touch()
    kept = (repo / "params.yaml").read_text()
    failed = taming(repo, "exp", "run", "-S", "top_k=9")
    assert failed.returncode == 1 and "dvc exp run failed" in failed.stderr and "is back as it was" in failed.stderr
    assert (repo / "params.yaml").read_text() == kept  # the next `dvc repro` runs on what the user wrote


def test_taming_exp_run_checks_every_point_of_a_queued_sweep(tmp_path):
    repo = make_toy_repo(tmp_path / "toy")
    original = (repo / "params.yaml").read_text()

    refused = taming(repo, "exp", "run", "--queue", "-S", "top_k=5,500")
    assert refused.returncode == 2 and "top_k: 500 is more than the image codebook's 128 entries" in refused.stderr
    sweep = taming(repo, "exp", "run", "-S", "top_k=5,6")
    assert sweep.returncode == 2 and "2 settings asked for (a sweep): add --queue" in sweep.stderr

    queued = taming(repo, "exp", "run", "--queue", "-S", "top_k=5,6", "-S", "top_p=0.5")
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.count("Queued experiment") == 2
    assert (repo / "params.yaml").read_text() == original  # queued experiments run in a copy
