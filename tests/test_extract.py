"""`extract` on real tar archives built on the fly: good, malicious and corrupt members."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from params_files import write_params
from PIL import Image

from tasks import cli, extract
from tasks.config.schema import ExtractConfig
from tasks.data.classes import str_to_indices
from tasks.data.images import load_rgb
from tasks.data.layout import TRAIN_TAR, VAL_SYNSETS, VAL_TAR
from tasks.extract import ExtractError, inspect_image

REPO = Path(__file__).resolve().parents[1]
SYNSETS = ["n01000001", "n01000002", "n01000003", "n01000004"]


def image_bytes(seed: int, mode: str = "RGB", fmt: str = "JPEG", size=(20, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    bands = {"RGB": 3, "CMYK": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    im = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def truncated() -> bytes:
    data = image_bytes(99, size=(64, 64))
    return data[: int(len(data) * 0.7)]


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, link, 0
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar_of(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            add(tar, *entry)
    return buf.getvalue()


def write_raw(raw: Path, train: dict, val: list, outer_extra=(), val_listing=None) -> Path:
    """train: {synset: [entry, ...]}; val: [(name, data, synset)]; entries as for ``add``."""
    raw.mkdir(parents=True, exist_ok=True)
    outer = [(f"{s}.tar", tar_of(entries)) for s, entries in train.items()] + list(outer_extra)
    (raw / TRAIN_TAR).write_bytes(tar_of(outer))
    (raw / VAL_TAR).write_bytes(tar_of([v[:2] if len(v) == 3 else v for v in val]))
    listing = val_listing if val_listing is not None else [(v[0], v[2]) for v in val if len(v) == 3]
    (raw / VAL_SYNSETS).write_text("".join(f"{n} {s}\n" for n, s in listing))
    (raw / "synsets.json").write_text(json.dumps({s: {"index": i, "human": f"thing {i}"}
                                                  for i, s in enumerate(SYNSETS)}))
    return raw


def good_raw(raw: Path, per_synset: int = 3) -> Path:
    train = {s: [(f"{s}_{i}.JPEG", image_bytes(10 * k + i)) for i in range(per_synset)]
             for k, s in enumerate(SYNSETS)}
    val = [(f"ILSVRC2012_val_{n:08d}.JPEG", image_bytes(1000 + n), SYNSETS[n % 4]) for n in range(1, 9)]
    return write_raw(raw, train, val)


def run(tmp_path: Path, raw: Path, **cfg) -> dict:
    return extract.run(ExtractConfig(**cfg), raw, tmp_path / "out", tmp_path / "metrics" / "extract.json")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rejected(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]


def test_good_archives_give_synset_trees_and_sorted_filelists(tmp_path):
    raw = good_raw(tmp_path / "raw")
    metrics = run(tmp_path, raw)
    out = tmp_path / "out"
    train = (out / "train" / "filelist.txt").read_text().splitlines()
    assert train == sorted(f"{s}/{s}_{i}.JPEG" for s in SYNSETS for i in range(3))
    for rel in train:
        synset, name = rel.split("/")
        assert (out / "train" / rel).read_bytes() == image_bytes(10 * SYNSETS.index(synset) + int(name[-6]))
    val = (out / "validation" / "filelist.txt").read_text().splitlines()
    assert val == sorted(f"{SYNSETS[n % 4]}/ILSVRC2012_val_{n:08d}.JPEG" for n in range(1, 9))
    assert (out / "validation" / val[0]).read_bytes() == image_bytes(1000 + int(val[0][-13:-5]))
    assert metrics["train"] == {"members": 12, "extracted": 12, "rejected": 0, "skipped": 0, "synsets": 4,
                                "missing": 0, "converted": {}}
    assert metrics["validation"]["extracted"] == 8
    assert json.loads((tmp_path / "metrics" / "extract.json").read_text()) == metrics
    assert (out / "rejected.jsonl").read_text() == ""
    # No temp debris is left behind.
    assert not [p for p in out.rglob(".tmp-*")]
    # Worker processes give the same bytes.
    extract.run(ExtractConfig(), raw, tmp_path / "parallel", tmp_path / "parallel.json", workers=2)
    assert tree(tmp_path / "parallel") == tree(out)


def test_a_synset_tar_is_read_in_place_and_never_past_its_end(tmp_path):
    """Synset tars are read where they lie in the train tar (a one-class source is one huge
    synset tar); one without its end-of-archive blocks must not run into the next synset."""
    raw = good_raw(tmp_path / "raw")
    unterminated = tar_of([(f"{SYNSETS[0]}_{i}.JPEG", image_bytes(i)) for i in range(2)])
    body = len(unterminated.rstrip(b"\0"))
    body += -body % 512                                         # the members, without the zero blocks after them
    outer = [(f"{SYNSETS[0]}.tar", unterminated[:body]),
             (f"{SYNSETS[1]}.tar", tar_of([(f"{SYNSETS[1]}_0.JPEG", image_bytes(7))]))]
    (raw / TRAIN_TAR).write_bytes(tar_of(outer))
    metrics = run(tmp_path, raw)
    assert (tmp_path / "out/train/filelist.txt").read_text().split() == [
        f"{SYNSETS[0]}/{SYNSETS[0]}_0.JPEG", f"{SYNSETS[0]}/{SYNSETS[0]}_1.JPEG", f"{SYNSETS[1]}/{SYNSETS[1]}_0.JPEG"]
    assert metrics["train"]["rejected"] == 0 and metrics["train"]["members"] == 3


def test_unsafe_members_are_refused_and_nothing_lands_outside_the_target(tmp_path):
    s = SYNSETS[0]
    evil_inner = [
        (f"{s}_ok.JPEG", image_bytes(1)),
        ("/tmp/evil_abs.JPEG", image_bytes(2)),
        ("../evil_up.JPEG", image_bytes(3)),
        (f"{s}/../../../evil_deep.JPEG", image_bytes(4)),
        ("evil_link.JPEG", b"", tarfile.SYMTYPE, "/etc/passwd"),
        ("evil_hard.JPEG", b"", tarfile.LNKTYPE, f"{s}_ok.JPEG"),
        ("evil_dev.JPEG", b"", tarfile.CHRTYPE),
        ("evil_fifo.JPEG", b"", tarfile.FIFOTYPE),
        ("evil_dir", b"", tarfile.DIRTYPE),
        ("sub/nested.JPEG", image_bytes(5)),
    ]
    outer_extra = [("../evil_outer.tar", tar_of([("x.JPEG", image_bytes(6))])),
                   ("evil_outer_link.tar", b"", tarfile.SYMTYPE, "/etc/passwd"),
                   ("README.txt", b"hello")]
    val = [("ILSVRC2012_val_00000001.JPEG", image_bytes(7), s),
           ("/abs/ILSVRC2012_val_00000002.JPEG", image_bytes(8)),
           ("../ILSVRC2012_val_00000003.JPEG", image_bytes(9)),
           ("ILSVRC2012_val_00000004.JPEG", b"", tarfile.SYMTYPE, "../../outside")]
    raw = write_raw(tmp_path / "raw", {s: evil_inner}, val, outer_extra,
                    val_listing=[("ILSVRC2012_val_00000001.JPEG", s), ("ILSVRC2012_val_00000004.JPEG", s)])
    before = set(tmp_path.parent.rglob("evil*"))
    metrics = run(tmp_path, raw)

    reasons = {(r["split"], r["member"]): r["reason"] for r in rejected(tmp_path)}
    assert reasons == {
        ("train", "/tmp/evil_abs.JPEG"): "absolute path",
        ("train", "../evil_up.JPEG"): "parent reference (..)",
        ("train", f"{s}/../../../evil_deep.JPEG"): "parent reference (..)",
        ("train", "evil_link.JPEG"): "symlink",
        ("train", "evil_hard.JPEG"): "hard link",
        ("train", "evil_dev.JPEG"): "device",
        ("train", "evil_fifo.JPEG"): "fifo",
        ("train", "evil_dir"): "directory",
        ("train", "sub/nested.JPEG"): "not a plain file name",
        ("train", "../evil_outer.tar"): "parent reference (..)",
        ("train", "evil_outer_link.tar"): "symlink",
        ("train", "README.txt"): "not a synset .tar",
        ("validation", "/abs/ILSVRC2012_val_00000002.JPEG"): "absolute path",
        ("validation", "../ILSVRC2012_val_00000003.JPEG"): "parent reference (..)",
        ("validation", "ILSVRC2012_val_00000004.JPEG"): "symlink",
    }
    # Only the two safe files were written, and nothing anywhere outside the target.
    out = tmp_path / "out"
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix == ".JPEG"}
    assert written == {f"train/{s}/{s}_ok.JPEG", f"validation/{s}/ILSVRC2012_val_00000001.JPEG"}
    assert set(tmp_path.parent.rglob("evil*")) == before
    assert not list(Path("/tmp").glob("evil_abs*"))
    assert not any(p.is_symlink() for p in out.rglob("*"))
    for split in ("train", "validation"):
        m = metrics[split]
        assert m["members"] == m["extracted"] + m["rejected"] + m["skipped"]
    assert metrics["train"]["members"] == 13 and metrics["train"]["rejected"] == 12
    assert metrics["validation"] == {**metrics["validation"], "members": 4, "extracted": 1, "rejected": 3}


def test_bad_images_are_rejected_or_kept_for_conversion_with_reconciling_counts(tmp_path):
    s = SYNSETS[0]
    entries = [
        (f"{s}_good.JPEG", image_bytes(1)),
        (f"{s}_cmyk.JPEG", image_bytes(2, "CMYK")),
        (f"{s}_grey.JPEG", image_bytes(3, "L")),
        (f"{s}_png.JPEG", image_bytes(4, fmt="PNG")),
        (f"{s}_zero.JPEG", b""),
        (f"{s}_trunc.JPEG", truncated()),
        (f"{s}_garbage.JPEG", b"this is not an image at all" * 10),
        (f"{s}_good.JPEG", image_bytes(5)),          # a second member with the same name
        (f"{s}_notes.txt", b"text"),
    ]
    val = [("ILSVRC2012_val_00000001.JPEG", truncated(), SYNSETS[1]),
           ("ILSVRC2012_val_00000002.JPEG", image_bytes(6, "L"), SYNSETS[1]),
           ("ILSVRC2012_val_00000002.JPEG", image_bytes(7), SYNSETS[1]),   # duplicate
           ("ILSVRC2012_val_00000009.JPEG", image_bytes(8))]                 # not in the synset list
    listing = [("ILSVRC2012_val_00000001.JPEG", SYNSETS[1]), ("ILSVRC2012_val_00000002.JPEG", SYNSETS[1]),
               ("ILSVRC2012_val_00000003.JPEG", SYNSETS[1])]                 # listed, not in the tar
    outer_extra = [(f"{SYNSETS[2]}.tar", b"definitely not a tar archive" * 40),
                   (f"{s}.tar", tar_of([(f"{s}_again.JPEG", image_bytes(9))]))]      # a second tar for s
    raw = write_raw(tmp_path / "raw", {s: entries}, val, outer_extra, val_listing=listing)
    metrics = run(tmp_path, raw)

    reasons = {r["member"]: r["reason"] for r in rejected(tmp_path) if r["split"] == "train"}
    assert reasons.pop(f"{s}_trunc.JPEG").startswith("truncated or corrupt")
    assert reasons.pop(f"{SYNSETS[2]}.tar").startswith("corrupt synset tar")
    assert reasons.pop(f"{s}.tar") == "duplicate name"
    assert reasons == {f"{s}_zero.JPEG": "zero-byte file", f"{s}_garbage.JPEG": "not an image",
                       f"{s}_good.JPEG": "duplicate name", f"{s}_notes.txt": "not a .JPEG name"}
    train = metrics["train"]
    assert (train["members"], train["extracted"], train["rejected"]) == (11, 4, 7)
    assert train["converted"] == {"CMYK JPEG": 1, "L JPEG": 1, "PNG data under a .JPEG name": 1}
    # Kept files are byte-identical and read back as RGB.
    folder = tmp_path / "out" / "train" / s
    assert (folder / f"{s}_good.JPEG").read_bytes() == image_bytes(1)
    for kind in ("good", "cmyk", "grey", "png"):
        assert load_rgb(folder / f"{s}_{kind}.JPEG").shape == (16, 20, 3)
    v = metrics["validation"]
    assert (v["members"], v["extracted"], v["rejected"], v["missing"]) == (4, 1, 3, 1)
    assert v["converted"] == {"L JPEG": 1}
    vreasons = sorted(r["reason"].split(":")[0] for r in rejected(tmp_path) if r["split"] == "validation")
    assert vreasons == ["duplicate name", f"not in {VAL_SYNSETS}", "truncated or corrupt"]
    assert metrics["rejected_by_reason"]["truncated or corrupt"] == 2


def test_inspect_image_classifies_each_kind():
    assert inspect_image(image_bytes(1)) == (None, None)
    assert inspect_image(b"") == ("zero-byte file", None)
    assert inspect_image(b"\xff\xd8\xff" + b"\x00" * 50)[0] is not None
    assert inspect_image(truncated())[0].startswith("truncated or corrupt")
    assert inspect_image(image_bytes(2, "CMYK")) == (None, "CMYK JPEG")
    assert inspect_image(image_bytes(3, fmt="PNG")) == (None, "PNG data under a .JPEG name")


def test_str_to_indices_matches_the_original():
    assert str_to_indices("32-35, 256") == [32, 33, 34, 256]      # end of a range excluded, as the original
    assert str_to_indices("5") == [5]
    with pytest.raises(ValueError):
        str_to_indices("1-3,")
    from tasks.config.typed import ConfigError

    with pytest.raises(ConfigError, match="extract.sub_indices"):
        ExtractConfig(sub_indices="1-2-3")


def test_sub_indices_restrict_classes_and_count_the_rest_as_skipped(tmp_path):
    raw = good_raw(tmp_path / "raw")
    metrics = run(tmp_path, raw, sub_indices="1-3")
    files = (tmp_path / "out" / "train" / "filelist.txt").read_text().splitlines()
    assert {f.split("/")[0] for f in files} == {SYNSETS[1], SYNSETS[2]}
    assert not (tmp_path / "out" / "train" / SYNSETS[0]).exists()
    assert metrics["train"] == {**metrics["train"], "members": 12, "extracted": 6, "skipped": 6}
    assert metrics["validation"] == {**metrics["validation"], "members": 8, "extracted": 4, "skipped": 4}


KILLER = """
import sys, time
from pathlib import Path
from tasks import extract
flag, kill_after = Path(sys.argv[4]), int(sys.argv[5])
original, calls = extract._Synset.add, [0]
def add(self, *args):
    original(self, *args)
    calls[0] += 1
    if calls[0] == kill_after:      # hold still mid-synset until the test kills us
        flag.write_text("now")
        time.sleep(120)
extract._Synset.add = add
extract.run(extract.ExtractConfig(), sys.argv[1], sys.argv[2], sys.argv[3])
"""


@pytest.mark.parametrize("kill_after", [8, 14])     # mid-train (synset 3 of 4), mid-validation
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, kill_after):
    raw = good_raw(tmp_path / "raw")
    reference = tmp_path / "reference"
    extract.run(ExtractConfig(), raw, reference / "out", reference / "extract.json")

    out, metrics, flag = tmp_path / "out", tmp_path / "extract.json", tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(raw), str(out), str(metrics), str(flag),
                             str(kill_after)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 60
    while not flag.exists():
        assert proc.poll() is None, "extract finished or died before the kill point"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not metrics.exists() and list(out.rglob(".tmp-*")), "the kill must interrupt a synset"
    finished = {p: p.stat().st_ino for p in out.glob("*/n*") if p.is_dir()}
    assert finished

    extract.run(ExtractConfig(), raw, out, metrics)
    assert tree(out) == tree(reference / "out")
    assert metrics.read_bytes() == (reference / "extract.json").read_bytes()
    # Synsets finished before the kill were not redone.
    assert {p: p.stat().st_ino for p in finished} == finished


def test_cli_runs_the_stage_and_reports_missing_inputs(tmp_path, capsys):
    raw = good_raw(tmp_path / "raw")
    params = write_params(tmp_path / "params.yaml", extract={"sub_indices": "0-2"})
    out = tmp_path / "out"
    assert cli.main(["extract", "--params", str(params), "--raw", str(raw), "--out", str(out),
                     "--metrics", str(tmp_path / "m.json")]) == 0
    assert "extract train: 12 members = 6 extracted + 0 rejected + 6 skipped" in capsys.readouterr().out
    assert cli.main(["extract", "--params", str(params), "--raw", str(tmp_path / "nope"), "--out", str(out),
                     "--metrics", str(tmp_path / "m.json")]) == 1
    assert f"{tmp_path / 'nope' / TRAIN_TAR}: not found" in capsys.readouterr().err
    with pytest.raises(ExtractError):
        extract.run(ExtractConfig(), tmp_path / "nope", out, tmp_path / "m.json")


def test_rerun_over_old_output_equals_a_fresh_run_when_inputs_or_selection_change(tmp_path):
    fresh = tmp_path / "fresh"
    raw = good_raw(tmp_path / "raw")
    run(tmp_path, raw)
    run(tmp_path, raw, sub_indices="0-2")                 # narrower selection: other synsets removed
    extract.run(ExtractConfig(sub_indices="0-2"), raw, fresh / "a", fresh / "a.json")
    assert tree(tmp_path / "out") == tree(fresh / "a")
    raw2 = good_raw(tmp_path / "raw2", per_synset=2)       # different archives, same synsets
    extract.run(ExtractConfig(), raw2, tmp_path / "out", tmp_path / "m.json")
    extract.run(ExtractConfig(), raw2, fresh / "b", fresh / "b.json")
    assert tree(tmp_path / "out") == tree(fresh / "b")
    assert len((tmp_path / "out" / "train" / "filelist.txt").read_text().split()) == 8


def test_synset_names_from_the_lists_cannot_escape_the_target(tmp_path):
    raw = good_raw(tmp_path / "raw")
    (raw / "synsets.json").write_text(json.dumps({"../../escape": {"index": 0, "human": "x"}}))
    with pytest.raises(ExtractError, match="'../../escape' is not a plain folder name"):
        run(tmp_path, raw)
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
