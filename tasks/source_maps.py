"""Stage ``source-maps --kind segmentation``: the label maps a data source ships (COCO-Stuff,
ADE20k) for every extracted image, as the models read them; no annotator runs.

Reads ``data/raw/maps.json`` (the source's label convention, tasks/data/label_maps.py),
``data/raw/<kind>_<split>.tar`` (acquire's ``<stem>.png`` members, the bytes as shipped) and
extract's file lists; writes ``data/dataset/<kind>/<split>/<synset>/<stem>.png``, uint8
labels after the source's shift (COCO-Stuff: id + 1 with unlabelled 0, 183 labels; ADE20k
as stored, 151), the layout annotate writes, so everything downstream reads them alike.
``data/dataset/<kind>/source.json`` says what they are, with the counts.

Every map is checked: a plain member name, an 8-bit single-channel PNG the size of its
image, labels below the source's count. Maps of images that extract rejected are skipped
and counted (maps = written + skipped); an extracted image without its map, or a bad map,
stops the stage with a message naming the file.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

from tasks.data.layout import DATA, MAP_KINDS, MAPS_JSON, SPLITS, Layout, maps_tar
from tasks.runtime import locks
from tasks.runtime.errors import StageError

CHUNK = 256    # maps converted ahead of the writer


class SourceMapsError(StageError):
    """The source's maps are missing, malformed or do not match the extracted images."""


def _convert(job: tuple[str, bytes, Path, Path, dict]) -> str | None:
    """Check and convert one map (runs in a worker): None, or what is wrong with it."""
    import numpy as np

    from tasks.data.formats import save_label_png
    from tasks.data.images import ImageRefused, open_image
    from tasks.data.label_maps import LabelMaps

    name, data, image_path, out_path, convention = job
    labels = LabelMaps(**convention)
    try:
        with open_image(image_path) as image:
            size = image.size
        with open_image(data, name) as im:
            if im.format != "PNG" or im.mode not in ("L", "P"):
                return f"a {im.format} image of mode {im.mode}; expected an 8-bit single-channel PNG of label ids"
            if im.size != size:
                return f"{im.size[0]}x{im.size[1]} px, but its image {image_path} is {size[0]}x{size[1]}"
            ids = labels.convert(np.asarray(im, dtype=np.uint8))
    except ImageRefused as e:
        return str(e) if e.where != name else f"unreadable PNG: {e.reason}"
    if int(ids.max()) >= labels.n_labels:
        return (f"label {int(ids.max())} (as the models read it) is outside the {labels.n_labels} labels of "
                f"{labels.description}")
    save_label_png(out_path, ids)
    return None


def _jobs(archive: Path, relpaths: dict[str, str], images: Path, out: Path, convention: dict, seen: set[str],
          tally: Counter):
    """The conversion job of each map in ``archive`` (one split), in tar order. Every stem is
    added to ``seen``; a map whose image extract rejected is counted (tally["no image"]), not used."""
    from tasks.data.archives import member_problem, open_tar, shown_name
    from tasks.data.limits import MAX_IMAGE_BYTES

    with open_tar(archive) as tar:
        for member in tar:
            problem = (member_problem(member, MAX_IMAGE_BYTES)
                       or (None if member.name.endswith(".png") else "not a .png name"))
            if problem:
                raise SourceMapsError(f"{archive}: member {shown_name(member.name)!r}: {problem}")
            stem = member.name[:-len(".png")]
            if stem in seen:
                raise SourceMapsError(f"{archive}: two maps named {shown_name(member.name)}")
            seen.add(stem)
            if stem not in relpaths:
                tally["no image"] += 1
                continue
            relpath = relpaths[stem]
            yield (f"{archive}/{member.name}", tar.extractfile(member).read(), images / relpath,
                   out / (relpath.rsplit(".", 1)[0] + ".png"), convention)


def run(kind: str, layout: Layout = DATA, workers: int = 1) -> dict:
    import json

    if kind not in MAP_KINDS:
        raise SourceMapsError(f"--kind {kind}: choose from {', '.join(MAP_KINDS)}")
    conventions_file = layout.raw / MAPS_JSON
    if not conventions_file.is_file():
        raise SourceMapsError(f"{conventions_file}: not found; the data source ships no label maps "
                              f"(COCO-Stuff and ADE20k do: data.source coco_stuff or ade20k, then `taming acquire`)")
    conventions = json.loads(conventions_file.read_text())
    if kind not in conventions:
        raise SourceMapsError(f"{conventions_file}: the data source ships no {kind} maps "
                              f"({', '.join(conventions) or 'none'}); compute them with annotate.{kind}")
    out = layout.maps(kind)
    with locks.hold(out):   # one writer: the folder is rebuilt from scratch
        return _write(kind, layout, workers, conventions[kind], out)


def _write(kind: str, layout: Layout, workers: int, convention: dict, out: Path) -> dict:
    from tasks.data.files import write_json
    from tasks.runtime.parallel import ordered_map
    from tasks.runtime.progress import progress

    shutil.rmtree(out, ignore_errors=True)
    counts = {}
    for split in SPLITS:
        listing = layout.filelist(split)
        if not listing.is_file():
            raise SourceMapsError(f"{listing}: not found (run `taming extract` first)")
        relpaths = {line.split("/")[-1].rsplit(".", 1)[0]: line for line in listing.read_text().splitlines() if line}
        archive, seen, tally, written = layout.raw / maps_tar(kind, split), set(), Counter(), 0
        if not archive.is_file():
            raise SourceMapsError(f"{archive}: not found (run `taming acquire` first)")
        pending = _jobs(archive, relpaths, layout.images / split, out / split, convention, seen, tally)
        try:
            with ordered_map(workers) as map_, progress(total=len(relpaths), desc=f"{kind} {split}", unit="map") as bar:
                while chunk := [job for _, job in zip(range(CHUNK), pending)]:
                    for job, problem in zip(chunk, map_(_convert, chunk)):
                        if problem:
                            raise SourceMapsError(f"{job[0]}: {problem}")
                        written += 1
                        bar.update(1)
        except tarfile.TarError as e:
            raise SourceMapsError(f"{archive}: unreadable tar: {e}") from None
        skipped = tally["no image"]
        missing = sorted(set(relpaths) - seen)
        if missing:
            raise SourceMapsError(f"{archive}: no map for {len(missing)} extracted {split} image(s), e.g. "
                                  f"{relpaths[missing[0]]}; the source ships one per image")
        counts[split] = {"maps": written + skipped, "written": written, "skipped_no_image": skipped}
        print(f"source-maps {kind} {split}: {written + skipped} maps = {written} written + {skipped} whose image "
              f"extract rejected; {convention['n_labels']} labels ({convention['description']})")
    write_json(out / "source.json", {**convention, "counts": counts})
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", required=True, choices=MAP_KINDS, help="which maps (params source_maps.<kind>)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes converting maps (default: all cores); the output does not depend on it")


def main(config, args: argparse.Namespace) -> None:
    if args.kind not in config.source_maps:
        raise StageError(f"source_maps.{args.kind}: not in params (configured: {', '.join(config.source_maps) or 'none'})")
    run(args.kind, workers=args.workers)
