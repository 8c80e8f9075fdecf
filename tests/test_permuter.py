"""Permuters: the original's index orders, and forward/backward are inverse permutations."""
import pytest
import torch

from models.permuter import (
    AlternateParsing,
    Identity,
    Random,
    SpiralIn,
    SpiralOut,
    Subsample,
    ZCurve,
    build_permuter,
    morton_code,
)

# forward_shuffle_idx for a 4x4 grid, as printed by CompVis/taming-transformers'
# taming/modules/transformer/permuter.py
ORIGINAL_4x4 = {
    Subsample: [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15],
    ZCurve: [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15],
    SpiralOut: [9, 5, 6, 10, 14, 13, 12, 8, 4, 0, 1, 2, 3, 7, 11, 15],
    SpiralIn: [15, 11, 7, 3, 2, 1, 0, 4, 8, 12, 13, 14, 10, 6, 5, 9],
    Random: [3, 13, 7, 2, 6, 10, 4, 1, 14, 0, 15, 9, 8, 12, 11, 5],
    AlternateParsing: [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
}


@pytest.mark.parametrize("cls", list(ORIGINAL_4x4), ids=lambda c: c.__name__)
def test_orders_match_the_original(cls):
    assert cls(4, 4).forward_shuffle_idx.tolist() == ORIGINAL_4x4[cls]


@pytest.mark.parametrize("cls", list(ORIGINAL_4x4), ids=lambda c: c.__name__)
@pytest.mark.parametrize("size", [2, 8, 16])
def test_forward_and_backward_are_inverse_permutations(cls, size):
    permuter = cls(size, size)
    n = size * size
    fwd, bwd = permuter.forward_shuffle_idx, permuter.backward_shuffle_idx
    assert sorted(fwd.tolist()) == list(range(n))
    assert torch.equal(fwd[bwd], torch.arange(n)) and torch.equal(bwd[fwd], torch.arange(n))
    x = torch.randint(0, 1000, (3, n))
    assert torch.equal(permuter(permuter(x), reverse=True), x)
    assert torch.equal(permuter(x)[:, 0], x[:, fwd[0]])


def test_spiral_out_starts_at_the_centre_and_ends_in_a_corner():
    order = SpiralOut(6, 6).forward_shuffle_idx.tolist()
    assert order[0] == 3 * 6 + 2 and order[-1] == 35
    assert SpiralIn(6, 6).forward_shuffle_idx.tolist() == order[::-1]


def test_zcurve_backward_index_is_the_morton_code():
    # the original stores the Morton codes themselves as backward_shuffle_idx
    codes = [morton_code(i, j) for i in range(8) for j in range(8)]
    assert ZCurve(8, 8).backward_shuffle_idx.tolist() == codes
    assert morton_code(0b11, 0b01) == 0b1011


def test_identity_and_builder():
    x = torch.arange(12).reshape(2, 6)
    assert torch.equal(Identity()(x), x) and torch.equal(Identity()(x, reverse=True), x)
    assert isinstance(build_permuter("Identity"), Identity)
    assert build_permuter("ZCurve", H=4, W=4).forward_shuffle_idx.tolist() == ORIGINAL_4x4[ZCurve]
    with pytest.raises(ValueError, match="unknown permuter"):
        build_permuter("Hilbert", 4, 4)


def test_bad_grids_and_lengths_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        Subsample(6, 6)
    with pytest.raises(ValueError, match="square"):
        SpiralOut(4, 8)
    with pytest.raises(ValueError, match="orders 16 positions"):
        ZCurve(4, 4)(torch.zeros(1, 15, dtype=torch.long))


def test_buffers_keep_the_original_state_dict_names():
    assert set(Random(4, 4).state_dict()) == {"forward_shuffle_idx", "backward_shuffle_idx"}
