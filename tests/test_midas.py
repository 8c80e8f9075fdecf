"""MiDaS v2.1: the official key layouts load strictly and the original code's outputs are
reproduced (tests/reference/midas_deeplab); the hub transform's sizes; batching."""
import os

import pytest
import torch
from reference_weights import fill_reference, layout, reference_layout, relative_error

from models import midas


@pytest.fixture(scope="module")
def expected(reference_dir):
    return torch.load(os.path.join(reference_dir, "midas_deeplab", "expected.pt"), weights_only=True)


@pytest.fixture(scope="module")
def small():
    return fill_reference(midas.MidasNet_small())


@pytest.mark.parametrize("name", ["midas_v21", "midas_v21_small"])
def test_reference_layout_and_outputs(name, reference_dir, expected):
    model = midas.ARCHITECTURES[name]()
    # Same names, shapes and dtypes as the official state dict (order included).
    assert layout(model) == reference_layout(reference_dir, name)
    fill_reference(model)
    with torch.no_grad():
        out = model(expected[f"{name}.input"])
    ref = expected[f"{name}.output"]
    assert out.shape == ref.shape
    assert relative_error(out, ref) < 1e-4
    assert (out >= 0).all()  # the final ReLU: inverse depth is non-negative


@pytest.mark.parametrize("hw, net_size, expected_size", [
    ((375, 500), 384, (288, 384)),   # ImageNet's common 4:3 landscape
    ((500, 375), 384, (384, 288)),
    ((333, 500), 384, (256, 384)),   # 0.768 * 333 = 255.7 -> nearest multiple of 32
    ((40, 40), 256, (256, 256)),     # small images are scaled up
    ((100, 390), 384, (96, 384)),    # 98.5 rounds to 96
    ((1000, 1010), 384, (384, 384)),  # 380.2 rounds to 384, not above the bound
])
def test_net_input_size_is_the_hub_transform(hw, net_size, expected_size):
    assert midas.net_input_size(*hw, net_size) == expected_size


def test_predict_batched_equals_one_by_one_and_has_image_size(small):
    torch.manual_seed(0)
    model = small
    images = [torch.randint(0, 256, (3, 40, 44), dtype=torch.uint8) for _ in range(3)]
    batched = midas.predict(model, images)
    for im, d in zip(images, batched):
        assert d.shape == (40, 44) and d.dtype == torch.float32
        assert torch.allclose(d, midas.predict(model, [im])[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(AssertionError, match="one network input size"):
        midas.predict(model, [images[0], torch.zeros(3, 40, 100, dtype=torch.uint8)])


def test_load_midas_reads_a_weights_file_strictly(small, tmp_path):
    model = small
    path = tmp_path / "small.pt"
    torch.save(model.state_dict(), path)
    loaded = midas.load_midas("midas_v21_small", path)
    assert not loaded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    state = model.state_dict()
    state.pop("scratch.output_conv.4.bias")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        midas.load_midas("midas_v21_small", path)
