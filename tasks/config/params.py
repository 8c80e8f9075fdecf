"""One check of the whole ``params.yaml`` before any stage does any work.

``dvc repro`` runs stages in order: a bad ``top_k`` would surface only after an
hour of training. So every pipeline command (``taming <stage>``, tasks/cli.py)
first builds *every* section's typed config here, once, and hands the stage its
own; a bad value anywhere stops the first stage with a message naming the key
(``top_p: must be in (0, 1] ...``, ``vqgan.foo.model: 'foo' is not one of ...``,
``conditioning: depth needs vqgan.depth``). Cheap: no torch import.

The top-level ``conditioning`` decides the graph: which per-image maps are computed
(``annotate``) or taken from the data source (``source_maps``) and which first stages
exist (``vqgan``); dvc.yaml makes one stage per entry of those sections, so they must hold
exactly what the conditioning reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from models.sampling_settings import SamplingSettings
from tasks.config.schema import (
    ANNOTATOR_LABELS,
    ANNOTATORS,
    CONDITIONINGS,
    MAPS_OF,
    OBJECT_SOURCES,
    SAMPLING_KEYS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    VQGAN_KINDS,
    AnnotateConfig,
    DataConfig,
    EvaluateConfig,
    ExtractConfig,
    PipelineConfig,
    PretrainedVQGAN,
    SampleConfig,
    TokenizeConfig,
    TransformerConfig,
    VQGANConfig,
)
from tasks.config.typed import ConfigError, build, load_params
from tasks.data.label_maps import PROVIDED_MAPS, LabelMaps

# DVC's run-cache leaves these keys out when it hashes a stage's params, at any depth
# (treeverse/dvc#10296): a parameter so named could change without rerunning its stage.
DVC_IGNORED_KEYS = ("size", "nfiles")


def validate(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> PipelineConfig:
    """Every section of the params file as its typed config; ConfigError naming the first bad key."""
    return from_dict(load_params(path, overrides))


def from_dict(params: dict) -> PipelineConfig:
    unknown = sorted(set(params) - set(TOP_LEVEL_KEYS) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)} "
                          f"(known: {', '.join(TOP_LEVEL_KEYS + SECTIONS)})")
    refuse_dvc_ignored_keys(params)

    def section(name: str) -> dict:
        value = params.get(name) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: must be a mapping, got {value!r}")
        return value

    conditioning = params.get("conditioning", "depth")
    if conditioning not in CONDITIONINGS:
        raise ConfigError(f"conditioning: {conditioning!r} is not one of {', '.join(CONDITIONINGS)}")
    data_source = section("data").get("source", "demo")
    config = PipelineConfig(
        conditioning=conditioning,
        sampling=build(SamplingSettings, {k: params[k] for k in SAMPLING_KEYS if k in params}),
        data=build(DataConfig, section("data"), "data"),
        extract=build(ExtractConfig, section("extract"), "extract"),
        annotate={kind: annotate_config(kind, value) for kind, value in section("annotate").items()},
        source_maps={kind: source_maps_config(kind, value, data_source)
                     for kind, value in section("source_maps").items()},
        vqgan={name: vqgan_config(name, value) for name, value in section("vqgan").items()},
        tokenize=build(TokenizeConfig, section("tokenize"), "tokenize"),
        transformer=build(TransformerConfig, section("transformer"), "transformer"),
        sample=build(SampleConfig, section("sample"), "sample"),
        evaluate=build(EvaluateConfig, section("evaluate"), "evaluate"),
    )
    check_consistency(config)
    return config


def annotate_config(kind: str, section: object) -> AnnotateConfig:
    key = f"annotate.{kind}"
    if kind not in ANNOTATORS:
        raise ConfigError(f"{key}: no annotator for {kind!r} (known: {', '.join(ANNOTATORS)})")
    if not isinstance(section, dict):
        raise ConfigError(f"{key}: must be a mapping of the annotator's settings, got {section!r}")
    return build(ANNOTATORS[kind], section, key)


def source_maps_config(kind: str, section: object, source: str) -> LabelMaps:
    """``source_maps.<kind>: {}``: use the maps the data source ships (their label convention)."""
    key = f"source_maps.{kind}"
    if section not in (None, {}):
        raise ConfigError(f"{key}: takes no settings (the maps are the data source's); write {{}}")
    provided = PROVIDED_MAPS.get(source, {})
    if kind not in provided:
        ships = f"ships {', '.join(provided)} maps" if provided else "ships no maps"
        raise ConfigError(f"{key}: data.source {source} {ships}; compute them with annotate.{kind} instead "
                          f"(sources with maps: {', '.join(f'{s} ({k})' for s, m in PROVIDED_MAPS.items() for k in m)})")
    return provided[kind]


def vqgan_config(name: str, section: object) -> VQGANConfig | PretrainedVQGAN:
    """A first stage to train (its settings), or a model folder to use ({folder: ...})."""
    key = f"vqgan.{name}"
    if not isinstance(section, dict):
        raise ConfigError(f"{key}: must be a mapping of the model's settings or {{folder: ...}}, got {section!r}")
    if "model" in section:
        raise ConfigError(f"{key}.model: not a parameter (the model kind is the key, {name!r})")
    cls = PretrainedVQGAN if "folder" in section else VQGANConfig
    return build(cls, {**section, "model": name}, key)


def check_consistency(config: PipelineConfig) -> None:
    """What no single section can check alone: mostly, that the graph-shaping sections
    hold exactly what the conditioning reads (dvc.yaml makes a stage of each entry)."""
    conditioning, tokenize, vqgans = config.conditioning, config.tokenize, config.vqgan
    maps = MAPS_OF[conditioning]
    wanted = {maps} if maps else set()
    both = set(config.annotate) & set(config.source_maps)
    if both:
        kind = sorted(both)[0]
        raise ConfigError(f"source_maps.{kind}: the {kind} maps come from data.source {config.data.source} or "
                          f"from annotate.{kind}, not both: remove one")
    given = set(config.annotate) | set(config.source_maps)
    if given != wanted:
        extra, missing = sorted(given - wanted), sorted(wanted - given)
        provided = PROVIDED_MAPS.get(config.data.source, {})
        if extra:
            unused = ", ".join(f"source_maps.{k} would be imported" if k in config.source_maps
                               else f"annotate.{k} would be computed" for k in extra)
            fix = f"{unused} for nothing: remove it"
        else:
            fix = f"add annotate.{', annotate.'.join(missing)} (the model that computes them)" + "".join(
                f" or source_maps.{k}: {{}} (data.source {config.data.source} ships them)"
                for k in missing if k in provided)
        raise ConfigError(f"annotate: conditioning {conditioning} reads "
                          f"{'the ' + maps + ' maps' if maps else 'no per-image maps'}; {fix}")
    check_objects(config)
    if tokenize.image_model not in vqgans:
        raise ConfigError(f"tokenize.image_model: {tokenize.image_model!r} is not a configured VQGAN "
                          f"(vqgan: {', '.join(vqgans) or 'none'})")
    wanted = {tokenize.image_model} | (wanted & set(VQGAN_KINDS))   # boxes need no first stage
    if set(vqgans) != wanted:
        extra, missing = set(vqgans) - wanted, wanted - set(vqgans)
        raise ConfigError(
            f"vqgan: conditioning {conditioning} uses the first stage(s) {', '.join(sorted(wanted))}; "
            + (f"vqgan.{', vqgan.'.join(sorted(extra))}: nothing reads it: remove it" if extra
               else f"add vqgan.{', vqgan.'.join(sorted(missing))} (settings to train it, or {{folder: ...}})"))
    check_label_count(config)
    image = vqgans[tokenize.image_model]
    if not isinstance(image, VQGANConfig):
        return  # a model folder: its sizes are checked when train-vqgan verifies it
    if conditioning == "coord" and tokenize.coord_n_embed > image.n_embed:
        raise ConfigError(f"tokenize.coord_n_embed: {tokenize.coord_n_embed} coordinate levels, more than the image "
                          f"codebook's {image.n_embed} entries: image and coordinate tokens share the GPT's vocabulary, "
                          f"which would then let it sample tokens no image code has (the original: 1024 for both)")
    if tokenize.rescale is not None and tokenize.rescale < image.resolution:
        raise ConfigError(f"tokenize.rescale: {tokenize.rescale} px is less than the crops' {image.resolution} px "
                          f"(vqgan.{tokenize.image_model}.resolution)")
    if maps in vqgans and isinstance(vqgans[maps], VQGANConfig) and vqgans[maps].resolution != image.resolution:
        raise ConfigError(f"vqgan.{maps}.resolution: {vqgans[maps].resolution} px, but the image VQGAN "
                          f"is trained at {image.resolution} px; the conditioning is cut like the image")
    resolution = config.sample.resolution
    if resolution is not None and (resolution < image.resolution or resolution % image.downsampling):
        raise ConfigError(f"sample.resolution: {resolution} must be >= the training size {image.resolution} "
                          f"and a multiple of the image VQGAN's downsampling factor {image.downsampling}")
    if config.evaluate.resolution != (resolution or image.resolution):
        raise ConfigError(f"evaluate.resolution: {config.evaluate.resolution} px, but the samples are "
                          f"{resolution or image.resolution} px (sample.resolution, or the image VQGAN's "
                          f"resolution): FID compares images of the samples' size")
    top_k = config.sampling.top_k
    if top_k is not None and top_k > image.n_embed:
        raise ConfigError(f"top_k: {top_k} is more than the image codebook's {image.n_embed} entries "
                          f"(vqgan.{tokenize.image_model}.n_embed); null keeps them all")


def check_label_count(config: PipelineConfig) -> None:
    """A segmentation VQGAN one-hots exactly the labels its maps hold: 182 from DeepLab v2,
    183 from COCO-Stuff (shifted), 151 from ADE20k."""
    vqgan = config.vqgan.get("segmentation")
    if not isinstance(vqgan, VQGANConfig):
        return
    if "segmentation" in config.source_maps:
        labels = config.source_maps["segmentation"]
        n, where = labels.n_labels, f"data.source {config.data.source}'s maps ({labels.description})"
    elif "segmentation" in config.annotate and config.annotate["segmentation"].model in ANNOTATOR_LABELS:
        model = config.annotate["segmentation"].model
        n, where = ANNOTATOR_LABELS[model], f"annotate.segmentation's {model}"
    else:
        return
    if vqgan.n_classes != n:
        raise ConfigError(f"vqgan.segmentation.n_classes: {vqgan.n_classes}, but {where} have {n} labels")


def check_objects(config: PipelineConfig) -> None:
    """Scene synthesis (conditioning objects) reads a scene dataset's boxes through a builder."""
    if config.conditioning == "objects":
        if config.data.source not in OBJECT_SOURCES:
            raise ConfigError(f"conditioning: objects reads the boxes of a scene dataset; data.source is "
                              f"{config.data.source}, use {' or '.join(OBJECT_SOURCES)}")
        if config.tokenize.objects is None:
            raise ConfigError("tokenize.objects: conditioning objects needs the conditional builder's settings "
                              "(e.g. {builder: objects_bbox, no_tokens: 8192})")
        if config.tokenize.rescale is not None:
            raise ConfigError("tokenize.rescale: not read with conditioning objects (a scene is cropped as the "
                              "original's dataset crops it: tokenize.objects.random_crop): remove it")
    elif config.tokenize.objects is not None:
        raise ConfigError(f"tokenize.objects: only read with conditioning objects (this is {config.conditioning}): "
                          f"remove it")


def refuse_dvc_ignored_keys(node: object, where: str = "") -> None:
    """No parameter may be named like a key DVC's run-cache ignores (see DVC_IGNORED_KEYS)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if key in DVC_IGNORED_KEYS:
                hint = " (use `resolution`)" if key == "size" else ""
                raise ConfigError(f"{path}: a parameter may not be named {key!r}: DVC's run-cache ignores such "
                                  f"keys (treeverse/dvc#10296), so changing it would reuse stale outputs{hint}")
            refuse_dvc_ignored_keys(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            refuse_dvc_ignored_keys(value, f"{where}[{i}]")
