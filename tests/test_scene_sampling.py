"""Scene models: a folder laid out like the published ones loads through load_pretrained and
samples from boxes (a layout file, or dataset records), at the training size and larger by a
sliding window that is the original's make_scene_samples.py, token for token."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scene_models import published_scene_folder

from models.conditioning import DummyCondStage
from models.pretrained import load_with_report
from models.sampling import generate_without_cache
from models.sampling_settings import SamplingSettings
from tasks.cli import main as taming
from tasks.data.objects.coco import load_coco
from tasks.data.objects.records import to_record
from tasks.generation.boxes import scene_tokens, window_crop
from tasks.generation.model import SamplingModel
from tasks.generation.tokens import sample_tokens

SCENE_DATA = Path(__file__).resolve().parent / "reference" / "scene_coco" / "data"
GREEDY = SamplingSettings(greedy=True)
LAYOUT = {"name": "kitchen", "objects": [{"label": "person", "bbox": [0.30, 0.30, 0.2, 0.5]},
                                         {"label": "wall-tile", "bbox": [0.0, 0.0, 1.0, 0.4]},
                                         {"category_id": 72, "bbox": [0.6, 0.5, 0.3, 0.3]}]}


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory) -> Path:
    return published_scene_folder(tmp_path_factory.mktemp("published"))


@pytest.fixture(scope="module")
def coco_model(coco_folder) -> SamplingModel:
    return SamplingModel.open(coco_folder, "cpu")


def test_a_published_scene_folder_loads_strictly(coco_folder):
    net, report = load_with_report(coco_folder)
    assert not report.missing and not report.unexpected and report.global_step == 123456
    assert isinstance(net.cond_stage_model, DummyCondStage) and net.cond_stage_key == "objects_bbox"
    tokens = torch.randint(0, 8192, (2, 92))
    assert torch.equal(net.encode_to_c(tokens)[1], tokens)        # the builder's tokens pass through
    model = SamplingModel.open(coco_folder, "cpu")
    scene = model.scene                                             # from the config's data section
    assert (model.kind, scene.n_classes, scene.make().embedding_dim, model.window) == ("objects_bbox", 171, 92, (8, 8))
    assert not Path(yaml.safe_load(next((coco_folder / "configs").iterdir()).read_text())["model"]["params"]
                    ["first_stage_config"]["params"]["ckpt_path"]).exists()


def annotations_of(model: SamplingModel):
    from tasks.data.objects.records import layout_annotations
    return layout_annotations(LAYOUT["objects"], model.scene.categories, "test")


def test_windows_see_their_part_of_the_layout(coco_model):
    annotations = annotations_of(coco_model)
    builder = coco_model.scene.make()
    c = scene_tokens(coco_model, annotations, (12, 16))
    assert c.shape == (1, 5, 9, 92)                                 # one sequence per window position
    for i, j in ((0, 0), (4, 8), (2, 5)):
        objects, crop = builder.inverse_build(c[0, i, j].tolist())
        np.testing.assert_allclose(crop, window_crop((0.0, 0.0, 1.0, 1.0), i, j, (12, 16), (8, 8)), atol=1 / 89)
        assert crop[2] == pytest.approx(0.5, abs=1 / 89) and crop[3] == pytest.approx(8 / 12, abs=1 / 89)
    def seen(i, j):
        return {coco_model.scene.categories.name(r % 171) for r, _ in builder.inverse_build(c[0, i, j].tolist())[0]}
    assert seen(0, 0) == {"person", "wall-tile"}           # the left half: the tv (x >= 0.6) is outside
    assert seen(4, 8) == {"wall-tile", "tv"}               # the right half: the person ends at x = 0.5
    assert scene_tokens(coco_model, annotations, (8, 8)).shape == (1, 92)   # the training grid: one sequence


def make_scene_samples(net, builder, annotations, z_shape: tuple[int, int], window: int) -> torch.Tensor:
    """scripts/make_scene_samples.py's sample() for an output larger than the training size,
    transcribed (first_stage_factor is the window in tokens), greedy instead of a draw."""
    y_max, x_max = z_shape

    def _helper(coord, coord_max, coord_window):
        assert 0 <= coord < coord_max
        coord_desired_center = (coord_window - 1) // 2
        return np.clip(coord - coord_desired_center, 0, coord_max - coord_window)

    def get_crop_coordinates(x, y):
        return _helper(x, x_max, window) / x_max, _helper(y, y_max, window) / y_max, window / x_max, window / y_max

    def get_z_indices_crop_out(z_indices, predict_x, predict_y):
        x0, y0 = _helper(predict_x, x_max, window), _helper(predict_y, y_max, window)
        cut_out_1 = z_indices[:, y0:predict_y, x0:x0 + window].reshape((z_indices.shape[0], -1))
        cut_out_2 = z_indices[:, predict_y, x0:predict_x]
        return torch.cat((cut_out_1, cut_out_2), dim=1)

    output_indices = torch.zeros((1, y_max, x_max)).long()
    for predict_y, predict_x in itertools.product(range(y_max), range(x_max)):
        crop_coordinates = get_crop_coordinates(predict_x, predict_y)
        z_indices = get_z_indices_crop_out(output_indices, predict_x, predict_y)
        c_indices = torch.LongTensor(builder.build(annotations, crop_coordinates))[None]
        with torch.no_grad():
            logits, _ = net.transformer(torch.cat((c_indices, z_indices), dim=1))
        output_indices[:, predict_y, predict_x] = logits[:, -1].argmax(-1)
    return output_indices.reshape(1, -1)


def test_sliding_window_sampling_is_make_scene_samples(coco_model):
    annotations = annotations_of(coco_model)
    grid = (10, 12)
    c = scene_tokens(coco_model, annotations, grid)
    ours = sample_tokens(coco_model, c, 1, grid, GREEDY)
    original = make_scene_samples(coco_model.net, coco_model.scene.make(), annotations, grid, 8)
    assert torch.equal(ours, original)


def test_training_size_sampling_is_the_originals_loop(coco_model):
    annotations = annotations_of(coco_model)
    c = scene_tokens(coco_model, annotations, (8, 8))
    ours = sample_tokens(coco_model, c, 1, (8, 8), GREEDY)
    with torch.no_grad():   # the original's sample(): the whole sequence again for every token
        original = generate_without_cache(coco_model.net.transformer, c, 64, GREEDY)
    assert torch.equal(ours, original)


def test_sample_model_writes_each_sample_beside_the_drawing_of_its_boxes(coco_folder, tmp_path):
    layout = tmp_path / "layout.yaml"
    layout.write_text(yaml.safe_dump(LAYOUT))
    coco = load_coco(SCENE_DATA, "validation")
    records = []
    for n in (0, 1):   # dataset boxes: records as annotate@objects writes them
        records.append(tmp_path / f"{coco.images[n].file_name[:-4]}.json")
        records[-1].write_text(json.dumps(to_record(coco.images[n], coco.annotations(n), coco.categories)))
    out = tmp_path / "samples"
    assert taming(["sample-model", str(coco_folder), "--boxes", str(layout), *map(str, records), "-n", "2",
                   "--resolution", "48x32", "--batch-size", "3", "-o", str(out), "--device", "cpu"]) == 0
    for name in ("kitchen", *(r.stem for r in records)):
        assert sorted(p.name for p in (out / name).iterdir()) == ["000000.png", "000001.png", "boxes.png"]
        for png in (out / name).iterdir():
            assert Image.open(png).size == (48, 32)
    drawing = np.asarray(Image.open(out / "kitchen" / "boxes.png"))
    assert len({tuple(p) for p in drawing.reshape(-1, 3)}) > 4     # boxes in palette colours, labels, frame
    summary = json.loads((out / "samples.json").read_text())
    assert summary["conditioning"] == "objects_bbox" and summary["sliding_window"] and summary["samples"] == 6


@pytest.mark.parametrize("layout, message", [
    ({"objects": [{"label": "unicorn", "bbox": [0, 0, 1, 1]}]}, r"'unicorn' is not a category id or name"),
    ({"objects": [{"label": "dog", "bbox": [0, 0, 1]}]}, r"object 0: bbox must be 4 numbers"),
    ({"objects": [{"label": "dog", "bbox": [1.5, 0, 0.1, 0.1]}]}, r"x0 and y0 must lie in \[0, 1\]"),
    ({"name": "../up", "objects": []}, r"name '../up' names an output folder"),
    ({"objects": [{"label": "dog", "bbox": [0, 0, 0.1, 0.1]}] * 31}, r"31 objects: .* takes at most 30"),
    ([{"boxes": []}], r"layout 0: expected \{name, objects"),
])
def test_layouts_that_cannot_be_sampled_are_refused(coco_folder, tmp_path, capsys, layout, message):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(layout))
    assert taming(["sample-model", str(coco_folder), "--boxes", str(path), "-n", "1", "-o", str(tmp_path / "o"),
                   "--device", "cpu"]) == 1
    assert __import__("re").search(message, capsys.readouterr().err)


def test_a_scene_model_takes_boxes_only(coco_folder, tmp_path, capsys):
    assert taming(["sample-model", str(coco_folder), "--classes", "3", "-o", str(tmp_path), "--device", "cpu"]) == 1
    assert "is conditioned on objects_bbox: give it --boxes" in capsys.readouterr().err
    assert taming(["sample-model", str(coco_folder), "-o", str(tmp_path), "--device", "cpu"]) == 1
    assert "give --boxes FILE" in capsys.readouterr().err


def test_an_open_images_centre_points_folder_samples_its_flags(tmp_path):
    folder = published_scene_folder(tmp_path, "objects_center_points", "open_images", name="oi_scene")
    model = SamplingModel.open(folder, "cpu")
    assert (model.scene.n_classes, model.scene.make().embedding_dim) == (340, 62)
    layout = tmp_path / "street.yaml"
    layout.write_text(yaml.safe_dump({"objects": [{"label": "Person", "bbox": [0.1, 0.2, 0.3, 0.6], "is_group_of": True,
                                                   "is_occluded": True},
                                                  {"label": "Car", "bbox": [0.5, 0.5, 0.4, 0.3]}]}))
    assert taming(["sample-model", str(folder), "--boxes", str(layout), "-n", "1", "-o", str(tmp_path / "o"),
                   "--device", "cpu"]) == 0
    from tasks.data.objects.records import read_layouts
    (_, annotations), = read_layouts(layout, model.scene.categories)
    tokens = scene_tokens(model, annotations, model.window)[0].tolist()
    person = model.scene.categories.lookup("Person")
    assert tokens[0] == person + 340 * (1 + 2) and tokens[2] == model.scene.categories.lookup("Car")
    assert sorted(p.name for p in (tmp_path / "o" / "street").iterdir()) == ["000000.png", "boxes.png"]


def test_the_app_samples_a_scene_model_from_a_layout(coco_folder, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "sampling_app.py"), default_timeout=300)
    at.run()
    at.sidebar.text_input(key="model").set_value(str(coco_folder)).run()
    assert not at.error and "conditioned on objects_bbox" in at.sidebar.caption[0].value
    assert "label: 'person'" in at.text_area(key="layout").value      # an example with the model's categories
    at.text_area(key="layout").set_value(yaml.safe_dump(LAYOUT)).run()
    assert not at.error and at.image[0].proto.imgs[0].caption == "conditioning: kitchen"
    at.sidebar.number_input(key="width").set_value(48).run()
    at.button(key="sample").click().run()
    assert not at.error
    assert np.asarray(Image.open(__import__("io").BytesIO(at.session_state["result"]))).shape == (32, 48, 3)
    at.text_area(key="layout").set_value("objects: [{label: unicorn, bbox: [0, 0, 1, 1]}]").run()
    assert at.error and "'unicorn' is not a category id or name" in at.error[0].value


def test_the_shipped_first_stage_config_is_the_published_scene_models():
    """profiles/first_stages/scene_vqgan_f16_8192-project.yaml makes the published COCO-8k and
    COCO/Open-Images-8k VQGAN checkpoints folders: the first_stage_config of the original's
    coco_scene_images_transformer.yaml / open_images_scene_images_transformer.yaml (as printed there)."""
    from models.first_stage import build_vqgan
    from models.folder import read_config

    published = {"embed_dim": 256, "n_embed": 8192, "ddconfig": {
        "double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0},
        "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}
    config = read_config(Path(__file__).resolve().parents[1] / "profiles/first_stages/scene_vqgan_f16_8192-project.yaml")
    assert config["target"] == "taming.models.vqgan.VQModel" and config["params"] == published
    vqgan = build_vqgan(config)
    assert vqgan.quantize.re_embed == 8192 and vqgan.encode(torch.zeros(1, 3, 256, 256))[2].numel() == 16 * 16
