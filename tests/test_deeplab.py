"""DeepLab v2 (COCO-Stuff): the official key layout loads strictly and the original code's
MSC output and labels are reproduced; taming's preprocessing; batching."""
import os

import pytest
import torch
from reference_weights import fill_reference, layout, reference_layout, relative_error

from models import deeplab

NAME = "deeplabv2_cocostuff"


@pytest.fixture(scope="module")
def model():
    return fill_reference(deeplab.deeplabv2_cocostuff())


def test_reference_layout_and_outputs(model, reference_dir):
    assert layout(model) == reference_layout(reference_dir, NAME)
    expected = torch.load(os.path.join(reference_dir, "midas_deeplab", "expected.pt"), weights_only=True)
    with torch.no_grad():
        out = model(expected[f"{NAME}.input"])
    ref = expected[f"{NAME}.output"]
    assert out.shape == ref.shape == (1, 182, 9, 11)  # output stride 8 of 65 x 81
    assert relative_error(out, ref) < 1e-4
    assert torch.equal(out.argmax(1), expected[f"{NAME}.labels"])


def test_preprocess_is_bgr_minus_caffe_mean():
    rgb = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    x = deeplab.preprocess(rgb)
    assert torch.allclose(x.flatten(), torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))


def test_segment_labels_at_image_size_batched_equals_one_by_one(model):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 30, 38), dtype=torch.uint8)
    labels = deeplab.segment(model, images)
    assert labels.shape == (2, 30, 38) and labels.dtype == torch.uint8
    assert int(labels.max()) < deeplab.N_CLASSES
    for i in range(2):
        assert torch.equal(labels[i], deeplab.segment(model, images[i:i + 1])[0])

