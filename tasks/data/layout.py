"""Where every stage's inputs and outputs live (the contracts of shared/design.md).

    data/raw/                        acquire: ILSVRC2012-style archives, synsets.json, groundtruth/ (demo),
                                     segmentation_<split>.tar + maps.json (sources that ship label maps),
                                     objects/ (scene datasets: the boxes of the packed images),
                                     sources.json (file-based sources: packed name -> its file)
    data/dataset/image/<split>/      extract: <synset>/<name>.JPEG, filelist.txt; rejected.jsonl
    data/dataset/depth/<split>/      annotate@depth: <synset>/<name>.png (RGBA-packed float32)
    data/dataset/segmentation/...    annotate@segmentation or source-maps@segmentation: <synset>/<name>.png
                                     (uint8 labels, as the models read them)
    data/dataset/objects/<split>/    annotate@objects: <synset>/<name>.json (a scene's boxes), categories.json
    data/vqgan/<name>/               train-vqgan@<name>: checkpoints/, configs/ (resume/: while running; a finished run's continuation point)
    data/tokens/<split>/             tokenize: part-NNNNN.parquet, manifest.json
    data/transformer/                train-transformer: checkpoints/, configs/
    data/dvclive/{vqgan/<name>,transformer}/  the training stages' DVCLive metrics and plots
    data/samples/                    sample: images/, samples.json, grid.png
    data/fid/                        fid-reference: Inception statistics of the reference images
    metrics/                         extract and evaluate: *.json

A model folder holds the model only (checkpoints, configs), so that what reads it can depend on
the folder. data/dataset/<key> holds, per image, the dataset key <key> of the original's sample dicts
(image, depth, segmentation): a conditioning's inputs are found by its name, and stages
that read "whatever the conditioning reads" depend on data/dataset and data/vqgan as a
whole, whose contents the profile decides. dvc.yaml names the same paths; `Layout(root)`
moves the whole tree (tests use temporary roots).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

SPLITS = ("train", "validation")
MAP_KINDS = ("depth", "segmentation")   # per-image maps an annotation stage writes

# acquire's outputs, in the layout of the official ImageNet files
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
VAL_SYNSETS = "validation_synset.txt"
SYNSETS_JSON = "synsets.json"
SOURCES_JSON = "sources.json"   # packed member name -> the file it came from (file-based sources)
MAPS_JSON = "maps.json"         # the label maps a source ships: {kind: their label convention}
FILELIST = "filelist.txt"
METRICS = Path("metrics")


def maps_tar(kind: str, split: str) -> str:
    """acquire's tar of a source's own maps of one split: ``<stem>.png`` members, as shipped."""
    return f"{kind}_{split}.tar"


@dataclass(frozen=True)
class Layout:
    root: Path = Path("data")

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def synsets_json(self) -> Path:
        return self.raw / SYNSETS_JSON

    def groundtruth(self, kind: str) -> Path:
        """The demo generator's exact maps: groundtruth/<kind>/<stem>.png."""
        return self.raw / "groundtruth" / kind

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def images(self) -> Path:
        return self.dataset / "image"

    def filelist(self, split: str) -> Path:
        return self.images / split / FILELIST

    def maps(self, kind: str) -> Path:
        if kind not in MAP_KINDS:
            raise ValueError(f"no per-image maps of kind {kind!r} (known: {', '.join(MAP_KINDS)})")
        return self.dataset / kind

    @property
    def objects(self) -> Path:
        """A scene dataset's boxes, one record per image (tasks/data/objects/records.py)."""
        return self.dataset / "objects"

    def map_file(self, kind: str, split: str, relpath: str) -> Path:
        """The map of image ``<split>/<relpath>``: ``<kind>/<split>/<synset>/<name>.png``."""
        return (self.maps(kind) / split / relpath).with_suffix(".png")

    def record_file(self, split: str, relpath: str) -> Path:
        """The object record of image ``<split>/<relpath>``: ``objects/<split>/<synset>/<name>.json``."""
        return (self.objects / split / relpath).with_suffix(".json")

    def sample_files(self, split: str, relpaths: Iterable[str], annotations: str | None = None) -> Iterator[Path]:
        """The files samples ``relpaths`` of ``split`` are read from: each image and, with
        ``annotations`` (a map kind, or objects), its map or object record."""
        for relpath in relpaths:
            yield self.images / split / relpath
            if annotations == "objects":
                yield self.record_file(split, relpath)
            elif annotations is not None:
                yield self.map_file(annotations, split, relpath)

    def vqgan(self, name: str) -> Path:
        return self.root / "vqgan" / name

    def logs(self, run: str) -> Path:
        """DVCLive's folder of a training run: ``vqgan/<name>`` or ``transformer``."""
        return self.root / "dvclive" / run

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def transformer(self) -> Path:
        return self.root / "transformer"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def fid(self) -> Path:
        return self.root / "fid"


DATA = Layout()
