"""The schema of params.yaml: one dataclass per section, validated when built.

`tasks.config.params.validate` builds all of them once, before any stage works, and
the CLI hands each stage its own section. Ranges are checked here, up front, so a bad
value fails the first stage of a `dvc repro` with a message naming its key instead of
an hour later (or never, training garbage). Plain Python only: no torch import.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.sampling_settings import PRECISIONS, SamplingSettings
from tasks.config.typed import check
from tasks.data.classes import str_to_indices
from tasks.data.label_maps import DEEPLAB_COCOSTUFF, LabelMaps
from tasks.data.scenes import KINDS

SPLITS = ("train", "validation")


def check_finite(value: float, key: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """A finite number in [low, high] ((low, high] with low_open)."""
    check(math.isfinite(value), key, f"must be a finite number, got {value}")
    if low is not None:
        check(value > low if low_open else value >= low, key, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None:
        check(value <= high, key, f"must be <= {high}, got {value}")


def check_device(device: str, key: str) -> None:
    check(device == "auto" or device.split(":")[0] in ("cpu", "cuda", "mps"), key,
          f"{device!r}: use auto, cpu, cuda, cuda:N or mps")


def check_positive(cfg, key: str, *names: str) -> None:
    for name in names:
        check(getattr(cfg, name) > 0, f"{key}.{name}", f"must be positive, got {getattr(cfg, name)}")


# ----------------------------------------------------------------------------- data

@dataclass
class DemoConfig:
    seed: int = 0
    resolution: int = 64        # square images, pixels
    classes: int = 10           # object kinds used (the first N of tasks.data.scenes.KINDS)
    n_train: int = 100          # training images per class
    n_val: int = 20             # validation images per class
    distractors: int = 2        # smaller objects of other kinds behind the main one
    jpeg_quality: int = 92

    def __post_init__(self):
        check(8 <= self.resolution <= 1024, "data.demo.resolution", "must be in 8..1024")
        check(1 <= self.classes <= len(KINDS), "data.demo.classes", f"must be in 1..{len(KINDS)}")
        check(self.n_train >= 1 and self.n_val >= 1, "data.demo.n_train", "n_train and n_val must be >= 1")
        check(self.distractors >= 0, "data.demo.distractors", "must be >= 0")
        check(1 <= self.jpeg_quality <= 100, "data.demo.jpeg_quality", "must be in 1..100")


@dataclass
class ImagenetConfig:
    train_tar: str = ""             # local path or s3:// URI of ILSVRC2012_img_train.tar
    val_tar: str = ""               # ... of ILSVRC2012_img_val.tar
    validation_synsets: str = ""    # ... of validation_synset.txt ("<file> <synset>" lines)
    synset_human: str = ""          # optional "<synset> <human label>" lines (e.g. LOC_synset_mapping.txt)
    check_sizes: bool = True        # false only for subsets / repacked archives


@dataclass
class CustomConfig:
    train_list: str = ""   # text file: one image path per line (relative: from the list's folder)
    test_list: str = ""
    root: str = ""         # listed images must lie under this folder (empty: each list's own folder)
    allow_outside: bool = False   # true: read listed images wherever they are


@dataclass(kw_only=True)
class ObjectsSourceConfig:
    """An annotated-objects dataset (scene synthesis): its folder in the original's layout and
    the original's filters: a box counts if its relative area is > min_object_area, an image
    if it has min..max such objects (tasks/data/objects/)."""
    root: str = ""                  # the original's data_path (local folder)
    min_object_area: float = 0.00001
    min_objects_per_image: int = 2
    max_objects_per_image: int = 30

    def check_source(self, key: str) -> None:
        check(bool(self.root.strip()), f"{key}.root", "required: the dataset's folder")
        check_finite(self.min_object_area, f"{key}.min_object_area", 0, 1)
        check(0 <= self.min_objects_per_image <= self.max_objects_per_image, f"{key}.min_objects_per_image",
              f"must be in [0, max_objects_per_image = {self.max_objects_per_image}]")
        check(self.max_objects_per_image >= 1, f"{key}.max_objects_per_image", "must be >= 1")


@dataclass(kw_only=True)
class CocoConfig(ObjectsSourceConfig):
    """``data.coco``: COCO 2017, annotations/{instances,stuff}_{train,val}2017.json, train2017/, val2017/."""
    use_things: bool = True         # the 80 instance categories
    use_stuff: bool = True          # the 91 stuff categories


@dataclass(kw_only=True)
class OpenImagesConfig(ObjectsSourceConfig):
    """``data.open_images``: Open Images v6 boxes (the published model's settings by default)."""
    min_object_area: float = 0.0001
    category_allow_list: Literal["top_300_classes_plus_coco_compatibility"] | None = \
        "top_300_classes_plus_coco_compatibility"
    category_mapping: Literal["open_images_unify_categories_for_coco"] | None = "open_images_unify_categories_for_coco"


OBJECT_SOURCES = ("coco", "open_images")


@dataclass
class FFHQConfig:
    root: str = ""          # FFHQ's images1024x1024 folder (<NNNNN>.png, flat or in its 00000/... folders)
    complete: bool = True   # every image the original's split lists name must be there (false: a subset)


@dataclass
class CelebAHQConfig:
    root: str = ""          # the folder of imgHQ<NNNNN>.npy files the PGGAN instructions produce
    complete: bool = True


@dataclass
class CocoStuffConfig:
    """``data.coco_stuff``: COCO 2017 images with the COCO-Stuff stuff+thing label maps."""
    root: str = ""              # COCO 2017: holds train2017/ and val2017/ (the images)
    stuffthing_root: str = ""   # COCO-Stuff: holds train2017/ and val2017/ label PNGs (stuffthingmaps_trainval2017)
    complete: bool = True       # the official 118,287 + 5,000 images (false: a subset)


@dataclass
class ADE20kConfig:
    root: str = ""          # ADEChallengeData2016: images/ and annotations/ ({training,validation}/)
    complete: bool = True   # the official 20,210 + 2,000 images (false: a subset)


@dataclass
class FolderConfig:
    root: str = ""                      # any folder of photos (.jpg/.jpeg/.png, subfolders too): S-FLCKR
    validation_fraction: float = 0.1    # the paper's S-FLCKR split: 10,764 of 107,625 photos, at random
    seed: int = 0                       # the random split (a seeded hash of each photo's path)

    def __post_init__(self):
        check_finite(self.validation_fraction, "data.folder.validation_fraction", 0, 1)
        check(0 < self.validation_fraction < 1, "data.folder.validation_fraction", "must be in (0, 1)")


# data.source -> the settings it needs (besides the section): where its files are
REQUIRED = {"imagenet": ("imagenet.train_tar", "imagenet.val_tar", "imagenet.validation_synsets"),
            "custom": ("custom.train_list", "custom.test_list"), "ffhq": ("ffhq.root",),
            "celebahq": ("celebahq.root",), "faceshq": ("celebahq.root", "ffhq.root"),
            "coco_stuff": ("coco_stuff.root", "coco_stuff.stuffthing_root"), "ade20k": ("ade20k.root",), "folder": ("folder.root",)}


@dataclass
class DataConfig:
    """Section ``data``: where the images come from (stage acquire). Besides the demo, ImageNet
    and image lists: FFHQ, CelebA-HQ, FacesHQ (both), COCO 2017 with COCO-Stuff label maps
    (coco_stuff), ADE20k and any folder of photos (S-FLCKR), read in the layout their downloads
    have; and the annotated-objects datasets of scene synthesis, COCO 2017 with its boxes (coco)
    and Open Images v6 (open_images), in the original's layout."""
    source: Literal["demo", "imagenet", "custom", "ffhq", "celebahq", "faceshq", "coco_stuff", "ade20k", "folder",
                    "coco", "open_images"] = "demo"
    demo: DemoConfig = field(default_factory=DemoConfig)
    imagenet: ImagenetConfig = field(default_factory=ImagenetConfig)
    custom: CustomConfig = field(default_factory=CustomConfig)
    ffhq: FFHQConfig = field(default_factory=FFHQConfig)
    celebahq: CelebAHQConfig = field(default_factory=CelebAHQConfig)
    coco_stuff: CocoStuffConfig = field(default_factory=CocoStuffConfig)
    ade20k: ADE20kConfig = field(default_factory=ADE20kConfig)
    folder: FolderConfig = field(default_factory=FolderConfig)
    coco: CocoConfig = field(default_factory=CocoConfig)
    open_images: OpenImagesConfig = field(default_factory=OpenImagesConfig)

    def __post_init__(self):
        for key in REQUIRED.get(self.source, ()):
            section, name = key.split(".")
            check(bool(getattr(getattr(self, section), name)), f"data.{key}",
                  f"required when data.source is {self.source}")
        if self.source in OBJECT_SOURCES:
            self.objects.check_source(f"data.{self.source}")

    @property
    def objects(self) -> ObjectsSourceConfig:
        """The annotated-objects dataset's settings (data.source coco or open_images)."""
        return getattr(self, self.source)


@dataclass
class ExtractConfig:
    """Section ``extract``."""
    sub_indices: str = ""    # restrict to these class indices, e.g. "32-123, 256"; empty = all

    def __post_init__(self):
        if self.sub_indices:
            try:
                str_to_indices(self.sub_indices)
            except ValueError as e:
                check(False, "extract.sub_indices", str(e))


# ----------------------------------------------------------------------------- annotation

@dataclass
class AnnotateConfig:
    """Section ``annotate.<kind>``: one network's map for every extracted image."""
    model: str
    weights: Path | None = None  # explicit weights file; default: the resolver (cache, S3 mirror, URL)
    batch_size: int = 8
    device: str = "auto"         # auto: CUDA when present, else CPU
    num_workers: int = 2         # image decoding processes
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    data_dir: Path = Path("data")
    shard: int = 0               # CLI only (--shard / --num-shards): sharding never changes an output
    num_shards: int = 1

    section = "annotate"         # the params section, for messages

    def __post_init__(self):
        key = self.section
        check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")
        check_device(self.device, f"{key}.device")
        check(len(self.splits) > 0 and set(self.splits) <= set(SPLITS), f"{key}.splits",
              f"{self.splits}: choose from {', '.join(SPLITS)}")
        check(self.num_shards >= 1 and 0 <= self.shard < self.num_shards, f"{key}.shard",
              f"{self.shard} of {self.num_shards}: need 0 <= shard < num_shards")
        check(self.weights is None or self.model != "groundtruth", f"{key}.weights",
              "the groundtruth model takes no weights")


@dataclass
class DepthConfig(AnnotateConfig):
    """``annotate.depth``: ``midas_v20`` (what the published D-RIN models were trained on),
    ``midas_v21`` (what torch.hub serves now), ``midas_v21_small``, or ``groundtruth`` (the
    demo's exact maps, no weights needed)."""
    model: Literal["midas_v20", "midas_v21", "midas_v21_small", "groundtruth"] = "groundtruth"
    section = "annotate.depth"


@dataclass
class SegmentConfig(AnnotateConfig):
    """``annotate.segmentation``: ``deeplabv2_cocostuff`` (DeepLab v2 MSC, as the original)
    or ``groundtruth``."""
    model: Literal["deeplabv2_cocostuff", "groundtruth"] = "groundtruth"
    section = "annotate.segmentation"


@dataclass
class ObjectsConfig(AnnotateConfig):
    """``annotate.objects``: the boxes of a scene dataset (data.source coco or open_images) for
    every extracted image, ``dataset``: as the dataset gives them (acquire kept the original's
    filters' images). One JSON record per image."""
    model: Literal["dataset"] = "dataset"
    section = "annotate.objects"


ANNOTATORS: dict[str, type[AnnotateConfig]] = {"depth": DepthConfig, "segmentation": SegmentConfig,
                                               "objects": ObjectsConfig}
# labels of the maps an annotator writes, where the network fixes them (DeepLab v2 on COCO-Stuff)
ANNOTATOR_LABELS = {"deeplabv2_cocostuff": DEEPLAB_COCOSTUFF.n_labels}

# What each conditioning reads besides the images: per-image maps (computed by an annotate
# stage, or shipped by the data source: section source_maps) or boxes (annotate@objects) and,
# for maps, a first stage that turns them into tokens (boxes become tokens through a
# conditional builder: tokenize.objects). Coordinates (FacesHQ) are computed from each crop's place.
CONDITIONINGS = ("depth", "segmentation", "class", "coord", "none", "objects")
MAPS_OF = {"depth": "depth", "segmentation": "segmentation", "class": None, "coord": None, "none": None,
           "objects": "objects"}


# ----------------------------------------------------------------------------- training

@dataclass(kw_only=True)
class TrainingConfig:
    """What both training stages share: the optimisation schedule and the Trainer."""
    base_learning_rate: float = 4.5e-6    # per sample: lr = base x batch_size x devices x accumulation
    batch_size: int = 16
    accumulate_grad_batches: int = 1
    max_steps: int = 1000                 # parameter updates
    val_every: int = 250
    ckpt_every: int = 100
    devices: int = 1
    seed: int = 0

    def _check_training(self, key: str) -> None:
        check_positive(self, key, "batch_size", "accumulate_grad_batches", "max_steps", "val_every",
                       "ckpt_every", "devices")
        check_finite(self.base_learning_rate, f"{key}.base_learning_rate", 0, low_open=True)

    def learning_rate(self) -> float:
        """The original's scaling: lr = base x batch x devices x accumulation."""
        return self.base_learning_rate * self.batch_size * self.devices * self.accumulate_grad_batches


@dataclass
class DDConfig:
    """The original Encoder/Decoder config. in_channels, out_ch and resolution follow
    from the model kind and crop size; give them only to double-check."""
    z_channels: int = 64
    ch: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    double_z: bool = False
    in_channels: int | None = None
    out_ch: int | None = None
    resolution: int | None = None
    norm_groups: int = 32           # GroupNorm groups (the original's 32); every width must divide by it


@dataclass
class QuantizerConfig:
    """models.vqgan.VQModel quantizer options; the defaults are the original's."""
    quantizer: Literal["vq", "ema"] = "vq"
    beta: float = 0.25
    legacy: bool = True
    l2_norm: bool = False
    ema_decay: float = 0.99
    restart_threshold: float = 0.1


@dataclass
class LossConfig:
    """VQLPIPSWithDiscriminator options (original names); segmentation uses codebook_weight only."""
    disc_start: int = 1000
    disc_weight: float = 0.8
    codebook_weight: float = 1.0
    perceptual_weight: float = 1.0
    disc_num_layers: int = 2
    disc_factor: float = 1.0
    disc_ndf: int = 64
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    use_actnorm: bool = False


VQGAN_KINDS = ("image", "depth", "segmentation")
IN_CHANNELS = {"image": 3, "depth": 1}


@dataclass(kw_only=True)
class VQGANConfig(TrainingConfig):
    """Section ``vqgan.<model>``: one first-stage model, ``image``, ``depth`` or ``segmentation``."""
    model: Literal["image", "depth", "segmentation"]
    n_embed: int = 256
    embed_dim: int = 64
    resolution: int = 32            # crop side in pixels (the original's `size`)
    ddconfig: DDConfig = field(default_factory=DDConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    n_classes: int = 182            # segmentation: one-hot channels (the maps' labels: 182 DeepLab, 183 COCO-Stuff, 151 ADE20k)
    rescale: int | None = None      # train crops are cut from images scaled to this shorter side (COCO: 296); null: resolution
    num_workers: int = 0

    def __post_init__(self):
        key = f"vqgan.{self.model}"
        self._check_training(key)
        check_positive(self, key, "n_embed", "embed_dim", "resolution", "n_classes")
        check(self.rescale is None or self.rescale >= self.resolution, f"{key}.rescale",
              f"{self.rescale} must be >= resolution {self.resolution} (crops are cut from the rescaled image) or null")
        check(self.n_embed <= 65536, f"{key}.n_embed", "must be <= 65536 (tokens are stored as uint16)")
        check(self.num_workers >= 0, f"{key}.num_workers", "must be >= 0")
        dd = self.ddconfig
        check(len(dd.ch_mult) >= 1 and all(m >= 1 for m in dd.ch_mult), f"{key}.ddconfig.ch_mult",
              f"must be a non-empty list of positive multipliers, got {dd.ch_mult}")
        check(dd.norm_groups >= 1, f"{key}.ddconfig.norm_groups", "must be >= 1")
        check(dd.ch > 0 and dd.ch % dd.norm_groups == 0, f"{key}.ddconfig.ch",
              f"must be a positive multiple of {dd.norm_groups} (ddconfig.norm_groups: GroupNorm's groups)")
        check(dd.z_channels > 0 and dd.num_res_blocks > 0, f"{key}.ddconfig",
              "z_channels and num_res_blocks must be positive")
        check_finite(dd.dropout, f"{key}.ddconfig.dropout", 0, 1)
        check(dd.dropout < 1, f"{key}.ddconfig.dropout", "must be < 1")
        factor = 2 ** (len(dd.ch_mult) - 1)
        check(self.resolution % factor == 0, f"{key}.resolution",
              f"{self.resolution} must be divisible by the downsampling factor {factor}")
        for name, want in (("in_channels", self.channels), ("out_ch", self.channels), ("resolution", self.resolution)):
            got = getattr(dd, name)
            check(got in (None, want), f"{key}.ddconfig.{name}", f"is {got} but the {self.model} model needs {want}")
        q, loss = self.quantizer, self.loss
        check_finite(q.beta, f"{key}.quantizer.beta", 0)
        check_finite(q.ema_decay, f"{key}.quantizer.ema_decay", 0, 1)
        check(q.ema_decay < 1, f"{key}.quantizer.ema_decay", "must be < 1")
        check_finite(q.restart_threshold, f"{key}.quantizer.restart_threshold", 0)
        check(loss.disc_start >= 0, f"{key}.loss.disc_start", "must be >= 0")
        for name in ("disc_weight", "codebook_weight", "perceptual_weight", "disc_factor"):
            check_finite(getattr(loss, name), f"{key}.loss.{name}", 0)
        check(loss.disc_num_layers >= 1 and loss.disc_ndf >= 1, f"{key}.loss", "disc_num_layers and disc_ndf must be >= 1")

    @property
    def channels(self) -> int:
        return self.n_classes if self.model == "segmentation" else IN_CHANNELS[self.model]

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.ddconfig.ch_mult) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // self.downsampling
        return side, side

    def ddconfig_dict(self) -> dict:
        dd = dataclasses.asdict(self.ddconfig)
        if dd["norm_groups"] == 32:    # the original's configs have no such key: write one only when needed
            del dd["norm_groups"]
        return {**dd, "in_channels": self.channels, "out_ch": self.channels, "resolution": self.resolution}

    def model_params(self) -> dict:
        """VQModel / VQSegmentationModel keyword arguments."""
        params = {"ddconfig": self.ddconfig_dict(), "n_embed": self.n_embed, "embed_dim": self.embed_dim}
        defaults = QuantizerConfig()
        params.update({k: v for k, v in dataclasses.asdict(self.quantizer).items() if getattr(defaults, k) != v})
        if self.model == "segmentation":
            params["n_labels"] = self.n_classes
        return params

    def loss_params(self) -> dict:
        if self.model == "segmentation":
            return {"codebook_weight": self.loss.codebook_weight}
        return {**dataclasses.asdict(self.loss), "disc_in_channels": self.channels}


@dataclass
class PretrainedVQGAN:
    """Section ``vqgan.<model>: {folder: ...}``: a first stage that is not trained here: an
    official taming log folder (e.g. vqgan_imagenet_f16_16384, or the Gumbel f8 model) or one
    published with `taming publish` (``s3://...``). Stage train-vqgan@<model> verifies it (the
    model kind, the checkpoint's SHA-256 if given, a reconstruction of validation images) and
    copies it into data/vqgan/<model>, so everything downstream reads it like a trained one."""
    model: Literal["image", "depth", "segmentation"]
    folder: str
    sha256: str | None = None   # expected SHA-256 of its checkpoint; any other file is refused

    def __post_init__(self):
        key = f"vqgan.{self.model}"
        check(bool(self.folder.strip()), f"{key}.folder", "must name a model folder (local path or s3:// URI)")
        check(self.sha256 is None or (len(self.sha256) == 64 and all(c in "0123456789abcdef" for c in self.sha256)),
              f"{key}.sha256", "must be 64 lowercase hex digits or null")

    @property
    def channels(self) -> int:
        return IN_CHANNELS.get(self.model, 0)


@dataclass
class ObjectsTokensConfig:
    """``tokenize.objects`` (conditioning objects): the conditional builder that turns an
    image's boxes and crop into its condition tokens, with the original's parameters
    (tasks/data/objects/builders.py); the number of classes and of objects come from the
    dataset (data.<source>.max_objects_per_image)."""
    builder: Literal["objects_bbox", "objects_center_points"] = "objects_bbox"
    no_tokens: int = 8192                    # coordinate grid int(sqrt(no_tokens))^2; none token no_tokens - 1
    encode_crop: bool = True                 # boxes in the image's frame + the crop's corners
    use_group_parameter: bool = True         # encode is_group_of (never set for COCO: its iscrowd is an int)
    use_additional_parameters: bool = False  # encode is_occluded, is_depiction, is_inside (Open Images)
    random_crop: Literal["random-1d", "random-2d"] = "random-1d"   # the crop of tokenize.extra_crops

    def __post_init__(self):
        check(5 <= self.no_tokens <= 65536, "tokenize.objects.no_tokens", "must be in [5, 65536] (uint16 tokens)")
        sections = math.isqrt(self.no_tokens)
        check(sections * sections < self.no_tokens, "tokenize.objects.no_tokens",
              f"{self.no_tokens} is a square: the bottom-right corner's token would be the none token "
              f"{self.no_tokens - 1}; use e.g. {self.no_tokens + 1} (the original: 8192, a 90 x 90 grid)")


@dataclass
class TokenizeConfig:
    """Section ``tokenize``: how images and their conditioning (the top-level ``conditioning``)
    become tokens."""
    image_model: str = "image"      # VQGAN folder data/vqgan/<image_model> for image tokens
    hflip: bool = True              # train: add the mirror image of each crop (aug 1)
    extra_crops: int = 0            # train: add this many seeded random crops (aug 2..)
    rescale: int | None = None      # train: crops come from images scaled to this shorter side; null: the crop size
    coord_n_embed: int = 1024       # conditioning coord: positions quantised to 0..n-1 (the original's CoordStage n_embed)
    batch_size: int = 64
    rows_per_part: int = 4096       # images per Parquet part (all their augmentations go with them)
    num_workers: int = 0
    seed: int = 0
    objects: ObjectsTokensConfig | None = None   # conditioning objects: the conditional builder

    def __post_init__(self):
        check(self.extra_crops >= 0, "tokenize.extra_crops", "must be >= 0")
        check_positive(self, "tokenize", "batch_size", "rows_per_part")
        check(self.num_workers >= 0, "tokenize.num_workers", "must be >= 0")
        check(self.rescale is None or self.rescale > 0, "tokenize.rescale", "must be positive or null")
        check(2 <= self.coord_n_embed <= 65536, "tokenize.coord_n_embed", "must be in 2..65536 (uint16 tokens)")

    def augmentations(self, split: str) -> list[int]:
        if split != "train":
            return [0]
        return [0] + ([1] if self.hflip else []) + list(range(2, 2 + self.extra_crops))


@dataclass(kw_only=True)
class TransformerConfig(TrainingConfig):
    """Section ``transformer``: the GPT and how it is trained."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    pkeep: float = 1.0               # keep each input image token with this prob. (original's corruption)
    label_dropout: float = 0.0       # classifier-free guidance: drop the condition to the null token
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    batch_size: int = 32
    max_steps: int = 2000
    init_from: str | None = None     # fine-tune: a transformer folder (or s3://) whose GPT weights start the run

    def __post_init__(self):
        self._check_training("transformer")
        check_positive(self, "transformer", "n_layer", "n_head", "n_embd")
        check(self.n_embd % self.n_head == 0, "transformer.n_embd", f"must be divisible by n_head ({self.n_head})")
        for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
            check_finite(getattr(self, name), f"transformer.{name}", 0, 1)
            check(getattr(self, name) < 1, f"transformer.{name}", "must be < 1")
        check_finite(self.pkeep, "transformer.pkeep", 0, 1, low_open=True)
        check_finite(self.label_dropout, "transformer.label_dropout", 0, 1)
        check(self.label_dropout < 1, "transformer.label_dropout", "must be < 1")
        check_finite(self.weight_decay, "transformer.weight_decay", 0)
        for i, beta in enumerate(self.betas):
            check_finite(beta, f"transformer.betas[{i}]", 0, 1)
            check(beta < 1, f"transformer.betas[{i}]", "must be < 1")
        check(self.warmup_steps >= 0, "transformer.warmup_steps", "must be >= 0")
        check_finite(self.min_lr_ratio, "transformer.min_lr_ratio", 0, 1)


# ----------------------------------------------------------------------------- sampling and evaluation

# top-level keys, swept with `dvc exp run -S` (read only by `sample`); guidance_scale != 1
# needs a transformer trained with condition dropout (transformer.label_dropout > 0)
SAMPLING_KEYS = ("top_k", "top_p", "temperature", "guidance_scale")
TOP_LEVEL_KEYS = ("conditioning", *SAMPLING_KEYS)


@dataclass
class SampleConfig:
    """Section ``sample``."""
    conditions: int = 16               # validation conditionings to sample for
    per_condition: int = 4             # samples per conditioning
    batch_size: int = 16
    classes: list[int] | None = None   # only conditionings of these class labels (null: any)
    seed: int = 0
    resolution: int | None = None      # output side in px (null: the training size; larger: sliding window)
    grid_conditions: int = 8           # rows of grid.png
    # px of one more sample per condition of the grid's first rows, shown below them: a
    # sliding-window sample above the training size (null: none)
    large_resolution: int | None = None
    device: str = "auto"               # auto: CUDA when present (the GPT in bf16 autocast there), else CPU
    # the GPT's weights while sampling: float32, bfloat16 or int8 (null: the model's own); a
    # precision the machine does not run natively falls back to float32 with a warning
    precision: str | None = None

    def __post_init__(self):
        for key in ("conditions", "per_condition", "batch_size", "grid_conditions"):
            check(getattr(self, key) >= 1, f"sample.{key}", "must be >= 1")
        check_device(self.device, "sample.device")
        check(self.precision is None or self.precision in PRECISIONS, "sample.precision",
              f"must be one of {', '.join(PRECISIONS)} or null")
        check(self.classes is None or (len(self.classes) > 0 and min(self.classes) >= 0),
              "sample.classes", "must be a non-empty list of class labels >= 0, or null")
        check(self.resolution is None or self.resolution >= 8, "sample.resolution", "must be >= 8 or null")
        check(self.large_resolution is None or self.large_resolution >= 8, "sample.large_resolution",
              "must be >= 8 or null")


@dataclass
class EvaluateConfig:
    """Section ``evaluate``: the FID protocol and the first stages' reconstruction metrics.

    FID/KID compare the samples with ``reference_images`` images of the ``reference`` split
    (the paper's tables: the train split; null: the whole split), preprocessed like the
    training data at ``resolution`` px (the samples' size). Stage fid-reference computes
    their Inception features once; evaluate-vqgan scores the first stages on the
    validation split (rFID on ``rfid_images`` of them, PSNR/SSIM and codebook usage on all)."""
    resolution: int                  # px of the samples and the reference images
    reference: Literal["validation", "train"] = "validation"
    reference_images: int | None = None
    rfid_images: int | None = None
    batch_size: int = 32
    kid_subsets: int = 100
    kid_subset_size: int = 1000      # capped at the smaller image set
    seed: int = 0                    # reference subset and KID subset draws
    device: str = "auto"             # auto: CUDA when present

    def __post_init__(self):
        check(self.resolution >= 8, "evaluate.resolution", "must be >= 8")
        check(self.batch_size > 0, "evaluate.batch_size", "must be positive")
        for key in ("reference_images", "rfid_images"):
            check(getattr(self, key) is None or getattr(self, key) > 1, f"evaluate.{key}", "must be > 1 or null")
        check(self.kid_subsets > 0, "evaluate.kid_subsets", "must be positive")
        check(self.kid_subset_size > 1, "evaluate.kid_subset_size", "must be > 1")
        check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "evaluate.device",
              f"{self.device!r}: use auto, cpu, cuda or cuda:N")


# ----------------------------------------------------------------------------- the whole file

SECTIONS = ("data", "extract", "annotate", "source_maps", "vqgan", "tokenize", "transformer", "sample", "evaluate")


@dataclass(frozen=True)
class PipelineConfig:
    """Every section of params.yaml, typed and validated."""
    conditioning: str                       # depth | segmentation | class | coord | none | objects
    sampling: SamplingSettings
    data: DataConfig
    extract: ExtractConfig
    annotate: dict[str, AnnotateConfig]     # the per-image maps the conditioning reads, computed by a network
    source_maps: dict[str, LabelMaps]       # ... or shipped by the data source (its label convention)
    vqgan: dict[str, VQGANConfig | PretrainedVQGAN]   # first stages: the image's and the conditioning's
    tokenize: TokenizeConfig
    transformer: TransformerConfig
    sample: SampleConfig
    evaluate: EvaluateConfig
