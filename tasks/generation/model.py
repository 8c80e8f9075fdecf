"""A transformer folder ready to sample: loaded once on its device, described for the callers.

    model = SamplingModel.open("logs/2021-04-03T19-39-50_cin_transformer")   # or s3://, a checkpoint
    model.kind, model.training_size, model.window, model.n_classes, model.can_guide, model.scene

``device="auto"`` is CUDA when present. On CUDA the GPT runs under bf16 autocast (where
the GPU supports it; softmax and the top-p cumulative sum stay float32 under autocast),
while the VQGANs encode (nearest-code search) and decode in float32, where bf16 could
change codes or colours.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from models.errors import ModelFileError
from models.folder import ModelFolder
from models.net2net import Net2NetTransformer
from models.pretrained import load_pretrained
from tasks.data.objects.builders import BUILDERS
from tasks.runtime.devices import resolve_device
from tasks.runtime.errors import StageError

# what a transformer can be conditioned on, as Net2NetTransformer.cond_stage_key names it;
# scenes (objects_bbox, objects_center_points): boxes and labels through a conditional builder
SCENE_KINDS = tuple(BUILDERS)
KINDS = ("none", "class_label", "depth", "segmentation", "coord", *SCENE_KINDS)


@dataclass
class SamplingModel:
    net: Net2NetTransformer
    folder: ModelFolder
    device: torch.device

    @classmethod
    def open(cls, path: str | Path, device: str = "auto") -> "SamplingModel":
        """A transformer folder, checkpoint or s3:// URI, loaded in eval mode on `device`."""
        folder = ModelFolder.open(path)
        if not folder.is_transformer:
            raise StageError(f"{folder.root}: holds a {folder.target.rsplit('.', 1)[-1]}, not a transformer; "
                             f"sample a transformer folder (a VQGAN's reconstructions: `taming reconstruct`)")
        device = resolve_device(device)
        model = cls(load_pretrained(folder.checkpoint, folder.config_path, map_location=device), folder, device)
        if model.kind not in KINDS:
            raise StageError(f"{folder.root}: conditioned on {model.kind!r}; sampling supports "
                             f"{', '.join(KINDS)}")
        return model

    @property
    def kind(self) -> str:
        """none | class_label | depth | segmentation | coord | objects_bbox | objects_center_points."""
        return "none" if self.net.be_unconditional else self.net.cond_stage_key

    @property
    def training_size(self) -> int:
        """The side in pixels the first stage (and the transformer's windows) were trained at."""
        return self.folder.resolution

    @property
    def downsampling(self) -> int:
        return self.folder.downsampling

    @property
    def window(self) -> tuple[int, int]:
        """The token grid of a training-size image: the transformer's context."""
        return self.folder.grid

    @property
    def n_classes(self) -> int | None:
        """Class labels a class-conditional model knows (0..n-1); None for others."""
        return getattr(self.net.cond_stage_model, "n_classes", None) if self.kind == "class_label" else None

    @property
    def n_labels(self) -> int | None:
        """Segmentation labels the condition VQGAN one-hot encodes; None for others."""
        return getattr(self.net.cond_stage_model, "n_labels", None) if self.kind == "segmentation" else None

    @property
    def window_centre(self) -> tuple[int, int] | None:
        """Where a sliding window holds the position it samples: the original's scripts differ,
        make_scene_samples.py (scenes) one token before sample_conditional.py (None: its)."""
        return tuple((n - 1) // 2 for n in self.window) if self.kind in SCENE_KINDS else None

    @functools.cached_property
    def scene(self):
        """A scene model's SceneConditioning (builder, its parameters, categories), from its
        project YAML: ours (`objects:`) or a published folder's `data:` section."""
        from tasks.data.objects.conditioning import SceneConditioning

        if self.kind not in SCENE_KINDS:
            raise StageError(f"{self.name} is conditioned on {self.kind}, not on boxes")
        try:
            return SceneConditioning.of_project(yaml.safe_load(self.folder.config_path.read_text()) or {})
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"{self.folder.config_path}: cannot tell what its {self.kind} tokens mean: {e}"
                                 ) from None

    @property
    def can_guide(self) -> bool:
        """Trained with condition dropout: classifier-free guidance works."""
        return self.net.null_token is not None

    @property
    def name(self) -> str:
        return self.folder.root.name

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of an output size, which must be a multiple of the downsampling
        factor and at least the training size (smaller needs a window the GPT never saw)."""
        f, size = self.downsampling, self.training_size
        if height % f or width % f or height < size or width < size:
            raise StageError(f"output size {width}x{height}: both sides must be multiples of {f} "
                             f"(the VQGAN's downsampling) and at least the training size {size}")
        return height // f, width // f

    def autocast(self):
        """bf16 autocast for the GPT on CUDA (when supported); float32 elsewhere."""
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the model's device (multinomial draws there)."""
        return torch.Generator(device=self.device).manual_seed(seed)
