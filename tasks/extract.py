"""Stage ``extract``: ILSVRC2012-style archives -> ``data/dataset/image/{train,validation}/<synset>/<name>.JPEG``.

Reads ``data/raw`` (see tasks/acquire.py) and writes

    <out>/train/<synset>/<name>.JPEG        from the tar of per-synset tars
    <out>/validation/<synset>/<name>.JPEG   the flat val tar, sorted into synsets by validation_synset.txt
    <out>/{train,validation}/filelist.txt   sorted "<synset>/<name>.JPEG" lines
    <out>/rejected.jsonl                    every refused or unreadable member with its reason
    metrics/extract.json                    counts: members = extracted + rejected + skipped, per split

Safety: archives are untrusted. Member bytes are written to paths built here from
checked plain names (tasks/data/archives.py); absolute paths, ``..``, links, devices,
fifos, directories, sparse members, members over MAX_IMAGE_BYTES and names that are
not UTF-8 or longer than 255 bytes are refused and reported, never followed or read.
A synset named like one of extract's own files (``filelist.txt``, ...) is refused too.
Synset tars are read in place, one member at a time, so memory never follows a size an
archive declares (tasks/data/limits.py). If a synset tar's headers break off, the
members before the break are kept and the rest is one rejected entry.

Images: each member is decoded (JPEG at 1/8 scale, which still reads the whole
entropy-coded stream, so truncation is caught cheaply) by the decoders of the accepted
formats only (tasks/data/images.py: JPEG, PNG, BMP, WebP; an EPS file never reaches
Ghostscript), after its header's pixel count is checked. Zero-byte, undecodable,
truncated, oversized and other-format files are rejected. Decodable oddities (PNG
bytes under a .JPEG name, CMYK, greyscale, palette) are kept byte for byte and
counted under ``converted``: tasks/data/datasets.py converts them to RGB when it reads
them, as the original ImageNet loader did.

Resumable: each synset is written into a hidden ``.tmp-<synset>`` folder together
with its ``.manifest.json`` and renamed into place when complete; the rename is
the completion marker. A run holds the lock ``<out>/../.<out name>.lock``
(tasks/runtime/locks.py) from start to end, so a second run into the same folder is
refused naming the first, and any temp folder found at the start belongs to a dead
run. A rerun deletes those unfinished temp folders, skips finished
synsets, and gives byte-identical output to an uninterrupted run. Finished synsets
are reused only while the inputs are unchanged (``.inputs.sha256``: a hash of every
tar member's header and of the synset lists), so with DVC's ``persist: true`` an
interrupted ``dvc repro`` resumes, and new archives start over.

Train synsets are independent units: ``--workers`` processes take them in parallel,
with byte-identical results for any number of workers.

``sub_indices`` ("32-123, 256") restricts classes by their synsets.json index with
the original's ``str_to_indices`` semantics (a range ``a-b`` excludes ``b``);
members of other classes are counted as ``skipped``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

from tasks.config.schema import ExtractConfig
from tasks.data.archives import is_plain_name, member_problem, open_member, open_tar, shown_name
from tasks.data.classes import ClassTable
from tasks.data.files import write_json, write_text
from tasks.data.images import ImageRefused, open_image
from tasks.data.layout import DATA, FILELIST, METRICS, SPLITS, SYNSETS_JSON, TRAIN_TAR, VAL_SYNSETS, VAL_TAR
from tasks.data.limits import MAX_IMAGE_BYTES, MAX_NAME_BYTES
from tasks.runtime import locks
from tasks.runtime.errors import StageError
from tasks.runtime.parallel import ordered_map
from tasks.runtime.progress import progress

MANIFEST = ".manifest.json"
REJECTED = "rejected.jsonl"
# the names extract writes beside synset folders: a synset so named is refused, not written over them
OWN_NAMES = (FILELIST, REJECTED, MANIFEST, ".inputs.sha256")


class ExtractError(StageError):
    """The inputs are unusable as a whole (missing archive, inconsistent synset lists)."""


def inspect_image(data: bytes) -> tuple[str | None, str | None]:
    """(rejection reason, conversion note) for one member's bytes; both None for a clean RGB JPEG."""
    try:
        with open_image(data) as im:
            fmt, mode = im.format, im.mode
            if fmt == "JPEG":
                im.draft(mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except ImageRefused as e:
        return e.reason, None
    if fmt != "JPEG":
        return None, f"{fmt} data under a .JPEG name"
    if mode != "RGB":
        return None, f"{mode} JPEG"
    return None, None


def _refusal(archive: str, member: str, synset: str | None, reason: str) -> dict:
    """One line of rejected.jsonl; a member name that is not UTF-8 is shown with \\xNN escapes."""
    return {"archive": archive, "member": shown_name(member), "synset": synset, "reason": reason}


def _synset_problem(synset: str) -> str | None:
    """Why a synset of the lists cannot be a folder here (it is a plain name: run() checks)."""
    if synset in OWN_NAMES:
        return f"synset named like extract's own file {synset}"
    if len(f".tmp-{synset}".encode()) > MAX_NAME_BYTES:
        return f"synset name longer than {MAX_NAME_BYTES - len('.tmp-')} bytes"
    return None


class _Synset:
    """One synset folder being written: temp dir, counts, manifest; ``finish`` renames it into place."""

    def __init__(self, split_dir: Path, synset: str, expected: set[str] | None = None):
        self.final = split_dir / synset
        self.tmp = split_dir / f".tmp-{synset}"
        self.synset, self.expected = synset, expected
        self.names: set[str] = set()
        self.rejected: list[dict] = []
        self.converted: Counter = Counter()
        self.members = 0
        self.tmp.mkdir(parents=True)

    def add(self, name: str, data: bytes | None, problem: str | None, archive: str) -> None:
        self.members += 1
        if problem is None and not name.endswith(".JPEG"):
            problem = "not a .JPEG name"
        if problem is None and name in self.names:
            problem = "duplicate name"
        note = None
        if problem is None:
            problem, note = inspect_image(data)
        if problem:
            self.rejected.append(_refusal(archive, name, self.synset, problem))
            return
        (self.tmp / name).write_bytes(data)
        self.names.add(name)
        if note:
            self.converted[note] += 1

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.expected <= self.names | {r["member"] for r in self.rejected}

    def finish(self) -> dict:
        missing = sorted(self.expected - self.names - {r["member"] for r in self.rejected}) if self.expected else []
        manifest = {"synset": self.synset, "members": self.members, "files": sorted(self.names),
                    "rejected": self.rejected, "converted": dict(sorted(self.converted.items())), "missing": missing}
        write_json(self.tmp / MANIFEST, manifest)
        self.tmp.rename(self.final)     # the completion marker
        return manifest


def _done(split_dir: Path, synset: str) -> dict | None:
    path = split_dir / synset / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _extract_synset(job: tuple[Path, int, int, str, Path]) -> dict | str:
    """Extract one synset tar (at ``offset``, ``size`` bytes into the outer tar): its manifest,
    or why the synset tar is unreadable. Runs in a worker; reads the synset tar in place,
    one member (at most MAX_IMAGE_BYTES) at a time (a one-class source such as FFHQ is a single
    synset tar of 89 GB)."""
    archive, offset, size, member_name, split_dir = job
    where = f"{TRAIN_TAR}/{member_name}"
    part = _Synset(split_dir, member_name[:-len(".tar")])
    try:
        with open_member(archive, offset, size) as f, open_tar(fileobj=f) as inner:
            for m in inner:
                problem = member_problem(m, MAX_IMAGE_BYTES)
                part.add(m.name, None if problem else inner.extractfile(m).read(), problem, where)
    except tarfile.TarError as e:
        if not part.members:
            shutil.rmtree(part.tmp)
            return f"corrupt synset tar: {e}"
        # the members before the damage are kept; the unreadable rest counts as one refused member
        part.add(member_name, None, f"corrupt synset tar after {part.members} members: {e}", TRAIN_TAR)
    return part.finish()


def _extract_train(archive: Path, split_dir: Path, selected: set[str], known: set[str],
                   workers: int) -> tuple[list, list, int]:
    """Returns (synset manifests, outer-level rejections, skipped member count)."""
    manifests, rejected, skipped, todo = [], [], 0, []
    with open_tar(archive) as outer:     # headers only: seeks over the synset tars
        seen = set()
        for member in outer:
            problem = member_problem(member, None) or (None if member.name.endswith(".tar") else "not a synset .tar")
            synset = member.name[:-len(".tar")]
            if not problem and synset not in known:
                problem = "synset not in synsets.json"
            if not problem:
                problem = _synset_problem(synset)
            if not problem and synset in seen:
                problem = "duplicate name"
            seen.add(synset)
            if not problem and synset not in selected:
                try:
                    with open_tar(fileobj=outer.extractfile(member)) as inner:
                        skipped += len(inner.getmembers())     # counted, not read
                    continue
                except tarfile.TarError as e:
                    problem = f"corrupt synset tar: {e}"
            if problem:
                rejected.append(_refusal(TRAIN_TAR, member.name, synset if synset in known else None, problem))
            elif done := _done(split_dir, synset):
                manifests.append(done)
            else:
                todo.append((archive, member.offset_data, member.size, member.name, split_dir))
    with ordered_map(workers) as map_:
        results = progress(map_(_extract_synset, todo), total=len(todo), desc="train synsets", unit="synset")
        for (*_, name, _), result in zip(todo, results):
            if isinstance(result, str):
                rejected.append(_refusal(TRAIN_TAR, name, name[:-len(".tar")], result))
            else:
                manifests.append(result)
    return manifests, rejected, skipped


def _extract_validation(archive: Path, listing: Path, split_dir: Path, selected: set[str],
                        known: set[str]) -> tuple[list, list, int]:
    truth: dict[str, str] = {}
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) != 2:
            if line.strip():
                raise ExtractError(f"{listing}:{n}: expected '<file name> <synset>', got {line!r}")
            continue
        if parts[1] not in known:
            raise ExtractError(f"{listing}:{n}: synset {parts[1]} is not in synsets.json")
        truth[parts[0]] = parts[1]
    refused = {s: problem for s in set(truth.values()) if (problem := _synset_problem(s))}
    expected: dict[str, set[str]] = {}
    for name, synset in truth.items():
        if synset not in refused:
            expected.setdefault(synset, set()).add(name)
    done = {s: m for s in expected if s in selected and (m := _done(split_dir, s))}
    parts: dict[str, _Synset] = {}
    rejected, skipped, seen = [], 0, set()
    with open_tar(archive) as tar:
        for member in progress(tar, total=len(truth), desc="validation", unit="img"):  # total: the listed files
            problem = member_problem(member, MAX_IMAGE_BYTES)
            synset = truth.get(member.name)
            if not problem and synset is None:
                problem = f"not in {VAL_SYNSETS}"
            if not problem:
                problem = refused.get(synset)
            if not problem and member.name in seen:
                problem = "duplicate name"     # decided here, so a resumed run counts it the same way
            seen.add(member.name)
            if problem:
                rejected.append(_refusal(VAL_TAR, member.name, synset, problem))
                continue
            if synset not in selected:
                skipped += 1
                continue
            if synset in done:
                continue
            if synset not in parts:
                parts[synset] = _Synset(split_dir, synset, expected[synset])
            part = parts[synset]
            part.add(member.name, tar.extractfile(member).read(), None, VAL_TAR)
            if part.complete:      # every listed file seen: finish now, so a rerun can skip it
                done[synset] = part.finish()
    for synset in sorted(selected & expected.keys() - done.keys()):   # files missing from the tar
        done[synset] = (parts.get(synset) or _Synset(split_dir, synset, expected[synset])).finish()
    return [done[s] for s in sorted(done)], rejected, skipped


def _summarise(split_dir: Path, manifests: list[dict], outer_rejected: list[dict], skipped: int) -> dict:
    files = sorted(f"{m['synset']}/{name}" for m in manifests for name in m["files"])
    write_text(split_dir / FILELIST, "".join(f + "\n" for f in files))
    rejected = len(outer_rejected) + sum(len(m["rejected"]) for m in manifests)
    converted = Counter()
    for m in manifests:
        converted.update(m["converted"])
    counts = {"members": sum(m["members"] for m in manifests) + len(outer_rejected) + skipped,
              "extracted": len(files), "rejected": rejected, "skipped": skipped, "synsets": len(manifests),
              "missing": sum(len(m["missing"]) for m in manifests), "converted": dict(sorted(converted.items()))}
    assert counts["members"] == counts["extracted"] + counts["rejected"] + counts["skipped"], counts
    return counts


def _fingerprint(raw: Path) -> str:
    """Identifies the inputs: every member header (name, size, header checksum, which covers
    the mtime) of both tars and of the synset tars inside, plus the two lists. Cheap: the
    tars are read header by header, seeking over the contents.

    Finished synsets are reused only while this is unchanged, so ``persist``-ed outputs or a
    rerun after new archives never mix old and new data.
    """
    h = hashlib.sha256()

    def headers(tar: tarfile.TarFile, where: str) -> None:
        for m in tar:
            h.update(f"{where}\0{m.name}\0{m.size}\0{m.chksum}\n".encode("utf-8", "surrogateescape"))
            if where == TRAIN_TAR and m.isreg() and m.name.endswith(".tar"):   # the synset tars too
                try:
                    with open_tar(fileobj=tar.extractfile(m)) as inner:
                        headers(inner, f"{where}/{m.name}")
                except tarfile.TarError:
                    h.update(b"corrupt\n")

    for name in (TRAIN_TAR, VAL_TAR):
        with open_tar(raw / name) as tar:
            headers(tar, name)
    for name in (VAL_SYNSETS, SYNSETS_JSON):
        h.update(hashlib.sha256((raw / name).read_bytes()).digest())
    return h.hexdigest()


def _start(out: Path, fingerprint: str) -> None:
    """Keep finished synsets only if they came from the same inputs; drop unfinished temp folders."""
    stamp = out / ".inputs.sha256"
    if stamp.is_file() and stamp.read_text().strip() != fingerprint:
        print(f"extract: the archives changed since {out} was written; starting over")
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        for stale in (out / split).glob(".tmp-*"):    # an interrupted run's unfinished synsets
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    write_text(stamp, fingerprint + "\n")


def _drop_unlisted(split_dir: Path, synsets: set[str]) -> None:
    """Remove finished synset folders of earlier runs that this run does not select (sub_indices)."""
    for folder in split_dir.iterdir():
        if folder.is_dir() and folder.name not in synsets and (folder / MANIFEST).is_file():
            shutil.rmtree(folder)


def run(cfg: ExtractConfig, raw_dir: str | Path = DATA.raw, out_dir: str | Path = DATA.images,
        metrics_path: str | Path = METRICS / "extract.json", workers: int = 1) -> dict:
    """Extract ``raw_dir``'s archives into ``out_dir``; ``workers`` processes take train synsets in
    parallel (the output does not depend on their number)."""
    raw, out = Path(raw_dir), Path(out_dir)
    for name in (TRAIN_TAR, VAL_TAR, VAL_SYNSETS, SYNSETS_JSON):
        if not (raw / name).is_file():
            raise ExtractError(f"{raw / name}: not found (run `taming acquire` first)")
    try:
        classes = ClassTable.read(raw / SYNSETS_JSON)
    except ValueError as e:
        raise ExtractError(str(e)) from None
    known = set(classes.labels)
    for synset in known:            # synsets name folders: plain names only
        if not is_plain_name(synset):
            raise ExtractError(f"{raw / SYNSETS_JSON}: synset {synset!r} is not a plain folder name")
    selected = classes.selected(cfg.sub_indices)
    with locks.hold(out):   # one run per folder: _start deletes what it takes for a dead run's debris
        return _extract(raw, out, Path(metrics_path), selected, known, workers)


def _extract(raw: Path, out: Path, metrics_path: Path, selected: set[str], known: set[str], workers: int) -> dict:
    try:
        _start(out, _fingerprint(raw))
        results = {"train": _extract_train(raw / TRAIN_TAR, out / "train", selected, known, workers),
                   "validation": _extract_validation(raw / VAL_TAR, raw / VAL_SYNSETS, out / "validation",
                                                     selected, known)}
    except tarfile.TarError as e:
        raise ExtractError(f"{raw}: unreadable archive: {e}") from e
    metrics, records = {}, []
    for split, (manifests, outer_rejected, skipped) in results.items():
        _drop_unlisted(out / split, {m["synset"] for m in manifests})
        metrics[split] = _summarise(out / split, manifests, outer_rejected, skipped)
        records += [{"split": split, **r} for r in outer_rejected]
        records += [{"split": split, **r} for m in manifests for r in m["rejected"]]
    records.sort(key=lambda r: (r["split"], r["synset"] or "", r["archive"], r["member"]))
    write_text(out / "rejected.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    metrics["rejected_by_reason"] = dict(sorted(Counter(r["reason"].split(":")[0] for r in records).items()))
    write_json(metrics_path, metrics)
    for split in SPLITS:
        m = metrics[split]
        print(f"extract {split}: {m['members']} members = {m['extracted']} extracted + {m['rejected']} rejected"
              f" + {m['skipped']} skipped (sub_indices); {m['synsets']} synsets; converted on read: "
              f"{sum(m['converted'].values())}; listed but missing: {m['missing']}")
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", default=str(DATA.raw), help="acquire's output folder (default: %(default)s)")
    parser.add_argument("--out", default=str(DATA.images), help="output folder (default: %(default)s)")
    parser.add_argument("--metrics", default=str(METRICS / "extract.json"), help="counts file (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes extracting train synsets (default: all cores); the output does not depend on it")


def main(config, args: argparse.Namespace) -> None:
    run(config.extract, args.raw, args.out, args.metrics, args.workers)
