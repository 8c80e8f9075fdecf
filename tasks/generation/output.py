"""Tokens to pictures, and pictures to disk as they come (memory does not grow with the count).

`NpzWriter` streams a stack of same-sized pictures into an .npz as the OpenAI/ADM
evaluation scripts read it: `arr_0` (N, H, W, 3) uint8, and `arr_1` (N,) int64 class
labels for class-conditional samples. The array's header is written first (N is known),
then each batch's bytes; the file appears under its name only when complete.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from tasks.data.files import atomic_path
from tasks.data.images import to_rgb_arrays
from tasks.runtime.errors import StageError


def decode(model, z: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Image tokens (B, H*W) raster -> pictures (B, H*f, W*f, 3) uint8, decoded in float32."""
    vq = model.net.first_stage_model
    n_embed = vq.quantize.re_embed  # the token ids the codebook decodes (after any remap)
    if int(z.max()) >= n_embed:
        raise StageError(f"{model.name} sampled token {int(z.max())}, outside its image codebook of {n_embed} "
                         f"(its GPT's vocabulary also holds condition tokens); lower top_k")
    with torch.inference_mode():
        return to_rgb_arrays(vq.decode_indices(z, grid))


def save_png(path: str | Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


class NpzWriter:
    """with NpzWriter(path, (N, H, W, 3)) as npz: npz.add(batch, labels) ... -- an .npz of N pictures."""

    def __init__(self, path: str | Path, shape: tuple[int, int, int, int], labels: bool = False):
        self.path, self.shape, self.with_labels = Path(path), shape, labels
        self.count, self.labels = 0, []

    def __enter__(self) -> "NpzWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._zip = zipfile.ZipFile(tmp, "w", allowZip64=True)
        self._array = self._zip.open("arr_0.npy", "w", force_zip64=True)
        self._array.write(_npy_header(self.shape, np.uint8))
        return self

    def add(self, pictures: np.ndarray, labels: list[int] | None = None) -> None:
        if pictures.shape[1:] != self.shape[1:] or pictures.dtype != np.uint8:
            raise ValueError(f"pictures {pictures.dtype} {pictures.shape[1:]} do not fit {self.shape[1:]} uint8")
        self._array.write(np.ascontiguousarray(pictures).tobytes())
        self.count += len(pictures)
        if self.with_labels:
            self.labels.extend(labels)

    def __exit__(self, kind, error, tb) -> None:
        self._array.close()
        if error is None and self.count != self.shape[0]:
            error = ValueError(f"{self.path}: {self.count} pictures written, {self.shape[0]} announced")
        if error is None and self.with_labels:
            labels = np.asarray(self.labels, dtype=np.int64)
            with self._zip.open("arr_1.npy", "w") as f:
                f.write(_npy_header(labels.shape, labels.dtype) + labels.tobytes())
        self._zip.close()
        # the temporary file is renamed into place only without an error
        self._atomic.__exit__(type(error) if error else None, error, None)
        if error is not None and kind is None:
            raise error
