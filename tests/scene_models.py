"""Scene model folders laid out like the published ones, for tests (no weights can be downloaded).

``published_scene_folder(root)`` writes ``configs/<timestamp>-project.yaml`` shaped like the
original's configs/coco_scene_images_transformer.yaml (or the Open Images one): its `model`
section with the same targets, keys and vocabulary (8192 tokens, DummyCondStage, a VQModel
first stage whose ckpt_path does not exist) at a small size, and its `data` section as the
original's main.py saves it into a log folder; and ``checkpoints/last.ckpt`` with
deterministic random weights in the layout pytorch-lightning 1.x saved them (a callbacks
dict keyed by the ModelCheckpoint class), as the published checkpoints are.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import yaml

from models.pretrained import build_model

GPT = {"n_layer": 1, "n_head": 2, "n_embd": 32, "embd_pdrop": 0.1, "resid_pdrop": 0.1, "attn_pdrop": 0.1}
VQGAN = {"embed_dim": 8, "n_embed": 8192,
         "ddconfig": {"double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                      "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0}}
DATASETS = {
    "coco": ("taming.data.annotated_objects_coco.AnnotatedObjectsCoco", "data/coco_annotations_100",
             {"min_object_area": 0.00001, "use_group_parameter": True, "encode_crop": True}),
    "open_images": ("taming.data.annotated_objects_open_images.AnnotatedObjectsOpenImages",
                    "data/open_images_annotations_100",
                    {"category_allow_list_target": "taming.data.open_images_helper.top_300_classes_plus_coco_compatibility",
                     "category_mapping_target": "taming.data.open_images_helper.open_images_unify_categories_for_coco",
                     "min_object_area": 0.0001, "use_group_parameter": True, "use_additional_parameters": True,
                     "encode_crop": True}),
}


def project_config(builder: str = "objects_bbox", dataset: str = "coco") -> dict:
    length = 30 * (3 if builder == "objects_bbox" else 2) + 2
    target, data_path, extra = DATASETS[dataset]

    def split(name: str, crop: str, flip: bool) -> dict:
        return {"target": target, "params": {"data_path": data_path, "split": name,
                                             "keys": ["image", builder, "file_name", "annotations"],
                                             "no_tokens": 8192, "target_image_size": 256, "min_objects_per_image": 2,
                                             "max_objects_per_image": 30, "crop_method": crop, "random_flip": flip,
                                             **extra}}
    return {
        "model": {"base_learning_rate": 4.5e-06, "target": "taming.models.cond_transformer.Net2NetTransformer",
                  "params": {
                      "cond_stage_key": builder,
                      "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT",
                                             "params": {"vocab_size": 8192, "block_size": 64 + length, **GPT}},
                      "first_stage_config": {"target": "taming.models.vqgan.VQModel",
                                             "params": {"ckpt_path": "/path/to/coco_epoch117.ckpt", **VQGAN,
                                                        "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}},
                      "cond_stage_config": {"target": "taming.models.dummy_cond_stage.DummyCondStage",
                                            "params": {"conditional_key": builder}}}},
        "data": {"target": "main.DataModuleFromConfig",
                 "params": {"batch_size": 6, "train": split("train", "random-1d" if dataset == "coco" else "random-2d",
                                                            True),
                            "validation": split("validation", "center", False)}},
    }


def save_lightning1_checkpoint(path: Path, state_dict: dict, global_step: int) -> None:
    """A checkpoint as pytorch-lightning 1.x wrote it: its callbacks are keyed by a class."""
    package = types.ModuleType("pytorch_lightning")
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = ModelCheckpoint
    saved = {name: sys.modules.get(name) for name in (package.__name__, module.__name__)}
    sys.modules.update({package.__name__: package, module.__name__: module})
    try:
        torch.save({"epoch": 29, "global_step": global_step, "pytorch-lightning_version": "1.0.8",
                    "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": None}},
                    "optimizer_states": [], "lr_schedulers": [], "state_dict": state_dict}, path)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def published_scene_folder(root: Path, builder: str = "objects_bbox", dataset: str = "coco",
                           name: str = "2021-05-03T14-47-16_coco_scene_images_transformer") -> Path:
    folder = Path(root) / name
    (folder / "configs").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    config = project_config(builder, dataset)
    (folder / "configs" / "2021-05-03T14-47-16-project.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    model = build_model(config["model"])
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=generator) * 0.3 if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    save_lightning1_checkpoint(folder / "checkpoints" / "last.ckpt", state, global_step=123456)
    return folder
