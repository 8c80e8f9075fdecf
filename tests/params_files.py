"""Params files for CLI tests: every pipeline command validates the whole params
file before work, so tests start from the repository's params.yaml (or a profile) and
replace only the sections they exercise."""
import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MAPS = {"depth": "depth", "segmentation": "segmentation", "class": None, "coord": None, "none": None}


def write_params(path: Path, base: str = "params.yaml", **sections) -> Path:
    """The repository's params.yaml (or ``base``) with some sections replaced, written to ``path``."""
    params = yaml.safe_load((REPO / base).read_text())
    params.update(sections)
    path.write_text(yaml.safe_dump(params))
    return path


def with_conditioning(params: dict, conditioning: str, annotator: dict | None = None) -> dict:
    """``params`` switched to another conditioning, consistently: `annotate` and `vqgan` hold
    exactly what it reads. A new conditioning VQGAN copies the settings of the existing one
    (a segmentation VQGAN: one-hot over 12 labels, the demo scenes' ids, or DeepLab's 182); ``annotator``
    overrides the new annotate entry (default: the existing one's settings, model groundtruth)."""
    params = copy.deepcopy(params)
    old = params.get("conditioning", "depth")
    existing = next(iter((params.get("annotate") or {}).values()), {})
    template_maps = {k: v for k, v in existing.items() if k in ("batch_size", "num_workers", "device")}
    template_vqgan = params["vqgan"].get(MAPS.get(old) or "", params["vqgan"]["image"])
    params["conditioning"] = conditioning
    maps = MAPS[conditioning]
    params["annotate"] = {maps: {**template_maps, "model": "groundtruth", **(annotator or {})}} if maps else {}
    vqgan = {"image": params["vqgan"]["image"]}
    if maps:
        vqgan[maps] = copy.deepcopy(template_vqgan)
        vqgan[maps].pop("n_classes", None)
        if maps == "segmentation":   # DeepLab's COCO-Stuff labels, else the demo scenes' ids
            model = params["annotate"][maps]["model"]
            vqgan[maps]["n_classes"] = 182 if model == "deeplabv2_cocostuff" else 12
    params["vqgan"] = vqgan
    return params
