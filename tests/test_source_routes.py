"""The paper's other datasets through the whole pipeline at smoke size, from fixtures laid out
as the real downloads (tests/source_fixtures.py): FacesHQ (CelebA-HQ .npy + FFHQ PNGs) with
coordinate conditioning, trained on crops and sampled larger than them; COCO 2017 with its
COCO-Stuff maps, which replace the annotator (`dvc dag` shows none). Each profile's graph."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from fixtures_pipeline import make_smoke_repo, pipeline_env, run_dvc
from params_files import with_conditioning
from PIL import Image
from source_fixtures import EXAMPLES, example_pairs, make_celebahq, make_coco, make_ffhq
from test_routes import COMMON, RAN, dag_stages

from models.conditioning import CoordStage
from tasks.data.datasets import coordinates
from tasks.data.token_store import TokenDataset
from tasks.generation import conditions as cond


@pytest.mark.parametrize("profile, route", [
    ("profiles/ffhq.yaml", set()),
    ("profiles/celebahq.yaml", set()),
    ("profiles/faceshq.yaml", set()),                       # coordinates need no maps and no second first stage
    ("profiles/coco-stuff.yaml", {"source-maps@segmentation", "train-vqgan@segmentation"}),     # no annotator
    ("profiles/ade20k.yaml", {"source-maps@segmentation", "train-vqgan@segmentation"}),
    ("profiles/sflckr.yaml", {"annotate@segmentation", "train-vqgan@segmentation"}),      # DeepLab v2
])
def test_dvc_dag_of_each_dataset_profile(tmp_path, profile, route):
    assert dag_stages(tmp_path, profile) == COMMON | route


def taming(repo, *args):
    """`taming ARGS` in the smoke repository, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "tasks.cli", *map(str, args)], cwd=repo, env=pipeline_env(),
                          capture_output=True, text=True)


def app_on(model):
    """The sampling app (Streamlit's AppTest) with a model folder loaded."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(EXAMPLES.parent / "app/sampling_app.py"), default_timeout=300)
    at.run()
    at.sidebar.text_input(key="model").set_value(str(model)).run()
    return at


def reproduce(repo, params: dict) -> list[str]:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = RAN.findall(run_dvc(repo, "repro", cpu_s=1800).stdout)
    assert json.loads(run_dvc(repo, "status", "--json").stdout) == {}
    return stages


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_faceshq_with_coordinates_trains_on_crops_and_samples_larger(tmp_path):
    repo = make_smoke_repo(tmp_path / "repo")
    celebahq, ffhq = make_celebahq(tmp_path / "src"), make_ffhq(tmp_path / "src")
    params = with_conditioning(yaml.safe_load((repo / "params.yaml").read_text()), "none")
    params["conditioning"] = "coord"
    params["data"] = {"source": "faceshq", "celebahq": {"root": str(celebahq), "complete": False},
                      "ffhq": {"root": str(ffhq), "complete": False}}
    params["vqgan"]["image"]["rescale"] = 32                 # 16 px crops of the 32 px faces
    params["tokenize"].update(rescale=32, extra_crops=2, coord_n_embed=32)     # the image codebook's size
    params["sample"]["resolution"] = params["evaluate"]["resolution"] = 32
    stages = reproduce(repo, params)
    assert set(stages) == COMMON, stages

    train, val = TokenDataset(repo / "data/tokens/train"), TokenDataset(repo / "data/tokens/validation")
    assert (train.meta.cond.kind, train.meta.cond.vocab_size, train.meta.cond.grid) == ("coord", 32, (4, 4))
    assert len(train) == 8 * 4 and len(val) == 4            # 4 + 4 faces x (centre, mirror, 2 crops); 2 + 2
    # validation: whole faces at 16 px, all the same coordinates; training crops lie in different places
    whole = CoordStage(32, 4).encode(torch.from_numpy(coordinates(16, 16))[None, None])[2].numpy()
    assert (val.cond_tokens == whole).all()
    assert len({row.tobytes() for row in train.cond_tokens}) > 2 and train.cond_tokens.max() < 32
    mirrored = train.aug == 1
    assert (train.cond_tokens[mirrored] == train.cond_tokens[train.aug == 0]).all()   # a mirror keeps its place
    project = yaml.safe_load((repo / "data/transformer/configs/transformer-project.yaml").read_text())["model"]
    assert project["params"]["cond_stage_key"] == "coord"
    assert project["params"]["cond_stage_config"] == {"target": "taming.modules.misc.coord.CoordStage",
                                                      "params": {"n_embed": 32, "down_factor": 4}}
    assert project["params"]["transformer_config"]["params"]["block_size"] == 32

    samples = json.loads((repo / "data/samples/samples.json").read_text())
    assert (samples["conditioning"], samples["resolution"], samples["sliding_window"]) == ("coord", 32, True)
    assert Image.open(repo / "data/samples/images/00000.png").size == (32, 32)
    assert json.loads((repo / "metrics/samples.json").read_text())["fd_random_inception"] >= 0

    # the command samples any size from the coordinate model, with nothing to give it
    out = taming(repo, "sample-model", "data/transformer", "--resolution", "48x32", "-n", "2", "-o", tmp_path / "s",
                 "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert [Image.open(tmp_path / "s" / f"{k:06d}.png").size for k in range(2)] == [(48, 32)] * 2
    refused = taming(repo, "sample-model", "data/transformer", "--classes", "1", "-o", tmp_path / "x")
    assert refused.returncode == 1 and "conditioned on coord: give it nothing" in refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_coco_stuff_maps_condition_without_an_annotator(tmp_path, monkeypatch):
    repo = make_smoke_repo(tmp_path / "repo")
    coco, stuff = make_coco(tmp_path / "src")
    params = with_conditioning(yaml.safe_load((repo / "params.yaml").read_text()), "segmentation")
    params.update(annotate={}, source_maps={"segmentation": {}})
    params["data"] = {"source": "coco_stuff", "coco_stuff": {"root": str(coco), "stuffthing_root": str(stuff), "complete": False}}
    params["vqgan"]["segmentation"]["n_classes"] = 183
    for section in (params["vqgan"]["image"], params["vqgan"]["segmentation"], params["tokenize"]):
        section["rescale"] = 19                              # the original's 296 -> 256, at 16 px
    stages = reproduce(repo, params)
    assert set(stages) == COMMON | {"source-maps@segmentation", "train-vqgan@segmentation"}, stages
    assert not any(s.startswith("annotate") for s in stages)

    for photo, shipped in example_pairs("coco")[6:]:          # the validation maps, shifted as the models read them
        ours = np.asarray(Image.open(repo / "data/dataset/segmentation/validation/coco" / f"{photo.stem}.png"))
        assert np.array_equal(ours, np.asarray(Image.open(shipped)))
    project = yaml.safe_load((repo / "data/transformer/configs/transformer-project.yaml").read_text())["model"]
    assert project["params"]["cond_stage_config"]["params"]["n_labels"] == 183
    assert "segmentation" in json.loads((repo / "metrics/reconstruction.json").read_text())
    assert json.loads((repo / "data/samples/samples.json").read_text())["conditioning"] == "segmentation"

    # the shipped COCO examples condition the trained model directly, and are the app's default examples
    maps = sorted((EXAMPLES / "coco/segmentations").glob("*.png"))[:2]
    out = taming(repo, "sample-model", "data/transformer", "--maps", *maps, "-n", "1", "-o", tmp_path / "s",
                 "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert sorted(p.parent.name for p in (tmp_path / "s").rglob("*.png")) == sorted(m.stem for m in maps)
    assert cond.shipped_examples(183) == EXAMPLES / "coco/segmentations"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")                              # no data/ here: the shipped examples
    app = app_on(repo / "data/transformer")
    assert app.text_input(key="examples").value == str(EXAMPLES / "coco/segmentations")
    assert len(app.selectbox(key="example").options) == 8
    app.button(key="sample").click().run()
    assert not app.error and app.session_state["result_name"].startswith("transformer-000000")
    # COCO-Stuff's own PNGs (255 = unlabelled) are not what the model reads: the shift is the pipeline's
    stored = stuff / "val2017" / f"{example_pairs('coco')[6][0].stem}.png"
    raw = taming(repo, "sample-model", "data/transformer", "--maps", stored, "--resolution", "256", "-n", "1",
                 "-o", tmp_path / "r")        # (at 16 px the few unlabelled pixels may all fall between the samples)
    assert raw.returncode == 1 and "label id 255 is outside the 183 labels" in raw.stderr
