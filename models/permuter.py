"""Orders in which the transformer visits the H x W latent grid.

Each permuter holds `forward_shuffle_idx` (sequence position -> raster index) and
`backward_shuffle_idx` (its inverse) as buffers with the original's names, and
produces exactly the orders of taming/modules/transformer/permuter.py, so
checkpoints trained with a permuter load and sample the same way.
`permuter(x)` reorders raster tokens (B, H*W) into sequence order;
`permuter(x, reverse=True)` undoes it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from models.limits import MAX_GRID_TOKENS


class Identity(nn.Module):
    """Raster order (row by row); the default."""

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        return x


class IndexPermuter(nn.Module):
    """A fixed permutation of the H*W raster positions."""

    def __init__(self, order):
        super().__init__()
        order = np.asarray(order, dtype=np.int64)
        if not np.array_equal(np.sort(order), np.arange(order.size)):
            raise ValueError(f"{type(self).__name__}: order is not a permutation of 0..{order.size - 1}")
        self.register_buffer("forward_shuffle_idx", torch.as_tensor(order))
        self.register_buffer("backward_shuffle_idx", torch.as_tensor(np.argsort(order)))

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        idx = self.backward_shuffle_idx if reverse else self.forward_shuffle_idx
        if x.shape[1] != idx.numel():
            raise ValueError(f"{type(self).__name__} orders {idx.numel()} positions, got a sequence of {x.shape[1]}")
        return x[:, idx]


class Subsample(IndexPermuter):
    """Coarse to fine: repeatedly split the grid into its 2x2 polyphase components."""

    def __init__(self, H: int, W: int):
        if H != W or H & (H - 1):
            raise ValueError(f"Subsample needs a square grid whose side is a power of two, got {H}x{W}")
        indices, C = np.arange(H * W).reshape(1, H, W), 1
        while H > 1:
            indices = indices.reshape(C, H // 2, 2, W // 2, 2).transpose(0, 2, 4, 1, 3)
            H, W, C = H // 2, W // 2, C * 4
            indices = indices.reshape(C, H, W)
        super().__init__(indices.ravel())


def morton_code(i: int, j: int) -> int:
    """Interleave the bits of (i, j): j's bits at even positions, i's at odd ones."""
    z = 0
    for bit in range(32):
        z |= ((j >> bit) & 1) << (2 * bit) | ((i >> bit) & 1) << (2 * bit + 1)
    return z


class ZCurve(IndexPermuter):
    """Z-order (Morton) curve: raster positions sorted by their Morton code."""

    def __init__(self, H: int, W: int):
        codes = [morton_code(i, j) for i in range(H) for j in range(W)]
        super().__init__(np.argsort(codes, kind="stable"))


def spiral_out_order(size: int) -> list[int]:
    """Raster indices of a size x size grid along a spiral from the centre outwards:
    start at (size//2, size//2 - 1), then up, right, down, left with run lengths
    1, 1, 2, 2, 3, 3, ... (the original's walk; the last run is one shorter)."""
    i, j = size // 2, size // 2 - 1
    order = [i * size + j]
    run = 0
    for ring in range(1, size // 2 + 1):
        run += 1
        moves = [(-1, 0)] * run + [(0, 1)] * run
        run += 1
        if ring < size // 2:
            moves += [(1, 0)] * run + [(0, -1)] * run
        else:
            moves += [(1, 0)] * (run - 1)
        for di, dj in moves:
            i, j = i + di, j + dj
            order.append(i * size + j)
    return order


class SpiralOut(IndexPermuter):
    """From the centre outwards."""

    def __init__(self, H: int, W: int):
        if H != W:
            raise ValueError(f"SpiralOut needs a square grid, got {H}x{W}")
        super().__init__(spiral_out_order(H))


class SpiralIn(IndexPermuter):
    """From the border inwards: SpiralOut reversed."""

    def __init__(self, H: int, W: int):
        if H != W:
            raise ValueError(f"SpiralIn needs a square grid, got {H}x{W}")
        super().__init__(spiral_out_order(H)[::-1])


class Random(IndexPermuter):
    """A fixed random order (numpy RandomState(1), as the original)."""

    def __init__(self, H: int, W: int):
        super().__init__(np.random.RandomState(1).permutation(H * W))


class AlternateParsing(IndexPermuter):
    """Boustrophedon: even rows left to right, odd rows right to left."""

    def __init__(self, H: int, W: int):
        indices = np.arange(H * W).reshape(H, W)
        indices[1::2] = indices[1::2, ::-1]
        super().__init__(indices.ravel())


PERMUTERS = {cls.__name__: cls for cls in (Identity, Subsample, ZCurve, SpiralOut, SpiralIn,
                                            Random, AlternateParsing)}


def build_permuter(name: str, H: int | None = None, W: int | None = None) -> nn.Module:
    """A permuter by its original class name ("Identity", "ZCurve", ...) for an H x W grid."""
    if name not in PERMUTERS:
        raise ValueError(f"unknown permuter {name!r}; choose one of {sorted(PERMUTERS)}")
    if name == "Identity":
        return Identity()
    if H is None or W is None:
        raise ValueError(f"permuter {name} needs the latent grid size H and W")
    if not (0 < H and 0 < W and H * W <= MAX_GRID_TOKENS):
        raise ValueError(f"permuter {name}: a {H}x{W} grid; at most {MAX_GRID_TOKENS} positions are supported")
    return PERMUTERS[name](H, W)
