"""`extract` on real tar archives built on the fly: good, malicious and corrupt members."""
import io
import json
import os
import signal
import socket
import stat
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
    for short in (b"\x00", b"II*", b"GIF8"):      # too short for some formats' magic-byte tests
        assert inspect_image(short) == ("not an image", None)
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


PAUSER = """
import sys, time
from pathlib import Path
from tasks import extract
flag, pause_after, release = Path(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
original, calls = extract._Synset.add, [0]
def add(self, *args):
    original(self, *args)
    calls[0] += 1
    if calls[0] == pause_after:     # hold still mid-synset until the test kills or releases us
        flag.write_text("now")
        while not release.exists():
            time.sleep(0.05)
extract._Synset.add = add
extract.run(extract.ExtractConfig(), sys.argv[1], sys.argv[2], sys.argv[3])
"""


def start_paused(tmp_path: Path, raw: Path, out: Path, metrics: Path, pause_after: int) -> subprocess.Popen:
    """An extract run in a subprocess, paused in the middle of a synset (release: tmp_path/release)."""
    flag = tmp_path / "flag"
    flag.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", PAUSER, str(raw), str(out), str(metrics), str(flag),
                             str(pause_after), str(tmp_path / "release")], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, "extract finished or died before the pause point"
        assert time.time() < deadline
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("kill_after", [8, 14])     # mid-train (synset 3 of 4), mid-validation
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, kill_after):
    raw = good_raw(tmp_path / "raw")
    reference = tmp_path / "reference"
    extract.run(ExtractConfig(), raw, reference / "out", reference / "extract.json")

    out, metrics = tmp_path / "out", tmp_path / "extract.json"
    proc = start_paused(tmp_path, raw, out, metrics, kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not metrics.exists() and list(out.rglob(".tmp-*")), "the kill must interrupt a synset"
    finished = {p: p.stat().st_ino for p in out.glob("*/n*") if p.is_dir()}
    assert finished
    # the dead run's lock file is still there, naming it; it does not block the rerun
    assert json.loads((tmp_path / ".out.lock").read_text())["pid"] == proc.pid

    extract.run(ExtractConfig(), raw, out, metrics)
    assert tree(out) == tree(reference / "out")
    assert metrics.read_bytes() == (reference / "extract.json").read_bytes()
    # Synsets finished before the kill were not redone.
    assert {p: p.stat().st_ino for p in finished} == finished


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    """Two runs into one folder used to lose data silently: the second deleted the first's
    unfinished synsets and both reported success with files missing."""
    raw = good_raw(tmp_path / "raw")
    extract.run(ExtractConfig(), raw, tmp_path / "reference" / "out", tmp_path / "reference" / "extract.json")
    out, metrics = tmp_path / "out", tmp_path / "extract.json"
    params = write_params(tmp_path / "params.yaml", extract={})
    first = start_paused(tmp_path, raw, out, metrics, pause_after=5)
    try:
        assert cli.main(["extract", "--params", str(params), "--raw", str(raw), "--out", str(out),
                         "--metrics", str(tmp_path / "second.json"), "--workers", "1"]) == 1
        err = capsys.readouterr().err
        assert f"{out} is being written by another run: pid {first.pid} on {socket.gethostname()} (" in err
        assert "since 20" in err and "PAUSER" not in err
        assert not (tmp_path / "second.json").exists()
    finally:
        (tmp_path / "release").write_text("go")
        assert first.wait(timeout=120) == 0
    assert tree(out) == tree(tmp_path / "reference" / "out")      # nothing of the first run was lost
    assert metrics.read_bytes() == (tmp_path / "reference" / "extract.json").read_bytes()


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


# ----------------------------------------------------------------------------- hostile archives

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
       b"newpath 0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")
HUGE = 64 * 2**30      # what a 20 KB archive can declare


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


def raw_member(info: tarfile.TarInfo, data: bytes, fmt=tarfile.GNU_FORMAT) -> bytes:
    """A member's header blocks and data, as they lie in an archive (for hand-made headers)."""
    info.size = len(data)
    return info.tobuf(fmt, "utf-8", "surrogateescape") + padded(data)


def raw_tar(*members: bytes) -> bytes:
    return b"".join(members) + b"\0" * (2 * tarfile.BLOCKSIZE)


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:tarfile.BLOCKSIZE])
    return bytes(header)


def gnu_sparse(name: str, realsize: int, data: bytes = b"\xff" * 512) -> bytes:
    """An old-GNU sparse member (type 'S', as `tar --sparse` writes): ``data`` at offset 0,
    then a hole up to ``realsize`` bytes that a reader fills with zeros."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = tarfile.GNUTYPE_SPARSE, len(data), 0
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:410] = tarfile.itn(0, 12, tarfile.GNU_FORMAT) + tarfile.itn(len(data), 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)   # the expanded size
    return with_checksum(header) + padded(data)


def pax_sparse(name: str, realsize: int, data: bytes = b"\xff" * 512) -> bytes:
    """A GNU sparse 1.0 member in pax headers (what `tar --sparse --format=pax` writes)."""
    sparse_map = padded(f"1\n0\n{len(data)}\n".encode())
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                        "GNU.sparse.realsize": str(realsize)}
    return raw_member(info, sparse_map + data, tarfile.PAX_FORMAT)


def pax_declared(name: str, size: int, data: bytes) -> bytes:
    """A member whose pax header declares ``size`` bytes while only ``data`` follows."""
    info = tarfile.TarInfo(name)
    info.pax_headers = {"size": str(size)}
    return raw_member(info, data, tarfile.PAX_FORMAT)


def pax_header_bomb(name: str) -> bytes:
    """A member whose pax extended header itself declares 2**40 bytes (base-256 size field)."""
    member = bytearray(pax_declared(name, 10, b"x" * 10))
    member[124:136] = tarfile.itn(2**40, 12, tarfile.GNU_FORMAT)
    return with_checksum(member[:tarfile.BLOCKSIZE]) + bytes(member[tarfile.BLOCKSIZE:])


def pixel_bomb() -> bytes:
    """A real 12000 x 12000 PNG of 140 KB: 432 MB once decoded to RGB."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, format="PNG")
    return buf.getvalue()


def fake_ghostscript(folder: Path, marker: Path) -> Path:
    """A `gs` on PATH that records that it ran: PIL's EPS decoder starts Ghostscript."""
    folder.mkdir()
    gs = folder / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> {marker}\n[ "$1" = --version ] && echo 10.0 && exit 0\nexit 1\n')
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR)
    return folder


def test_hostile_archive_is_refused_member_by_member_in_bounded_memory_and_runs_no_program(tmp_path):
    s0, s1, s2 = SYNSETS[:3]
    bomb = pixel_bomb()
    assert len(bomb) < 200_000
    m = lambda name, data: raw_member(tarfile.TarInfo(name), data)   # noqa: E731
    inner0 = raw_tar(
        m(f"{s0}_good.JPEG", image_bytes(1)),
        m(f"{s0}_eps.JPEG", EPS),
        m(f"{s0}_tiff.JPEG", image_bytes(2, fmt="TIFF")),
        m(f"{s0}_webp.JPEG", image_bytes(3, fmt="WEBP")),
        m(f"{s0}_bmp.JPEG", image_bytes(4, fmt="BMP")),
        gnu_sparse(f"{s0}_sparse.JPEG", HUGE),
        pax_sparse(f"{s0}_paxsparse.JPEG", HUGE),
        m(f"{s0}_bomb.JPEG", bomb),
        m(f"{s0}_good2.JPEG", image_bytes(5)),
        pax_declared(f"{s0}_declared.JPEG", HUGE, image_bytes(6)),   # nothing after it can be found
    )
    inner1 = raw_tar(pax_header_bomb(f"{s1}_x.JPEG"), m(f"{s1}_y.JPEG", image_bytes(7)))
    assert len(inner0) + len(inner1) < 100_000      # declaring 64 GiB, 1 TiB and 144 Mpx
    train = raw_tar(m(f"{s0}.tar", inner0), m(f"{s1}.tar", inner1),
                    m(f"{s2}.tar", tar_of([(f"{s2}_ok.JPEG", image_bytes(8))])))
    val = raw_tar(m("ILSVRC2012_val_00000001.JPEG", EPS), gnu_sparse("ILSVRC2012_val_00000002.JPEG", HUGE),
                  m("ILSVRC2012_val_00000003.JPEG", bomb), m("ILSVRC2012_val_00000004.JPEG", image_bytes(9)))
    raw = write_raw(tmp_path / "raw", {}, [], val_listing=[(f"ILSVRC2012_val_0000000{i}.JPEG", s2) for i in range(1, 5)])
    (raw / TRAIN_TAR).write_bytes(train)
    (raw / VAL_TAR).write_bytes(val)

    # The attack is real: PIL on its own hands an EPS member named .JPEG to Ghostscript.
    marker = tmp_path / "ghostscript-ran"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "PATH": f"{fake_ghostscript(tmp_path / 'bin', marker)}{os.pathsep}{os.environ['PATH']}"}
    plain_pil = "import io, sys; from PIL import Image; Image.open(io.BytesIO(sys.stdin.buffer.read())).load()"
    control = subprocess.run([sys.executable, "-c", plain_pil], input=EPS, env=env, capture_output=True)
    assert control.returncode != 0 and b"CalledProcessError" in control.stderr and marker.exists()
    marker.unlink()

    out = tmp_path / "out"
    # the CLI, then its own peak RSS (VmHWM: ru_maxrss would count this big parent's pages, forked)
    extract_then_peak = ("import sys; from tasks import cli; rc = cli.main(sys.argv[1:]); "
                         "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", extract_then_peak, "extract", "--params", str(REPO / "params.yaml"),
                           "--raw", str(raw), "--out", str(out), "--metrics", str(tmp_path / "m.json"), "--workers", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), "extract started Ghostscript"
    peak_kb = int(proc.stdout.split("VmHWM:")[1].split()[0])
    assert peak_kb < 200 * 1024, f"peak RSS {peak_kb} KB"   # ~50 MB; decoding the bomb alone peaks at 700 MB

    eps = "format EPS not accepted (accepted: JPEG, PNG, BMP, WEBP)"
    reasons = {(r["split"], r["member"]): r["reason"] for r in rejected(tmp_path)}
    assert reasons == {
        ("train", f"{s0}_eps.JPEG"): eps,
        ("train", f"{s0}_tiff.JPEG"): "format TIFF not accepted (accepted: JPEG, PNG, BMP, WEBP)",
        ("train", f"{s0}_sparse.JPEG"): "sparse file",
        ("train", f"{s0}_paxsparse.JPEG"): "sparse file",
        ("train", f"{s0}_bomb.JPEG"): "12000x12000 is more than 67108864 pixels",
        ("train", f"{s0}_declared.JPEG"): f"{HUGE} bytes, more than the limit of {128 * 2**20}",
        ("train", f"{s0}.tar"): "corrupt synset tar after 10 members: unexpected end of data",
        ("train", f"{s1}.tar"): reasons[("train", f"{s1}.tar")],
        ("validation", "ILSVRC2012_val_00000001.JPEG"): eps,
        ("validation", "ILSVRC2012_val_00000002.JPEG"): "sparse file",
        ("validation", "ILSVRC2012_val_00000003.JPEG"): "12000x12000 is more than 67108864 pixels",
    }
    assert reasons[("train", f"{s1}.tar")].startswith("corrupt synset tar: extended header of 1099511627776 bytes")
    # Everything else still extracts: accepted formats are kept byte for byte for conversion on read.
    files = (out / "train" / "filelist.txt").read_text().split()
    assert files == [f"{s0}/{s0}_{k}.JPEG" for k in ("bmp", "good", "good2", "webp")] + [f"{s2}/{s2}_ok.JPEG"]
    assert (out / "train" / s0 / f"{s0}_webp.JPEG").read_bytes() == image_bytes(3, fmt="WEBP")
    assert (out / "validation" / "filelist.txt").read_text().split() == [f"{s2}/ILSVRC2012_val_00000004.JPEG"]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["train"]["converted"] == {"BMP data under a .JPEG name": 1, "WEBP data under a .JPEG name": 1}
    for split, extracted in (("train", 5), ("validation", 1)):
        c = metrics[split]
        assert c["extracted"] == extracted
        assert c["members"] == c["extracted"] + c["rejected"] + c["skipped"]
        assert c["rejected"] == sum(1 for r in rejected(tmp_path) if r["split"] == split)


def test_member_and_synset_names_that_cannot_be_files_are_refused_and_reruns_agree(tmp_path):
    """Names that are not UTF-8, longer than a file name may be, or the names of extract's
    own files: refused into rejected.jsonl, and a rerun gives the same output."""
    s = SYNSETS[0]
    not_utf8 = f"{s}_caf\udce9.JPEG"        # tarfile's view of the byte 0xe9
    too_long = f"{s}_{'x' * 250}.JPEG"
    entries = [(f"{s}_ok.JPEG", image_bytes(1)), (not_utf8, image_bytes(2)), (too_long, image_bytes(3))]
    inner = raw_tar(*(raw_member(tarfile.TarInfo(n), d) for n, d in entries))
    own = "filelist.txt"
    train = raw_tar(raw_member(tarfile.TarInfo(f"{s}.tar"), inner),
                    raw_member(tarfile.TarInfo(f"{own}.tar"), tar_of([("a.JPEG", image_bytes(4))])))
    val = [("ILSVRC2012_val_00000001.JPEG", image_bytes(5), s), ("ILSVRC2012_val_00000002.JPEG", image_bytes(6), own),
           ("ILSVRC2012_val_00000003.JPEG", image_bytes(7), "rejected.jsonl")]
    raw = write_raw(tmp_path / "raw", {}, val)
    (raw / TRAIN_TAR).write_bytes(train)
    (raw / "synsets.json").write_text(json.dumps({n: {"index": i, "human": n}
                                                  for i, n in enumerate([s, own, "rejected.jsonl"])}))
    first = run(tmp_path, raw)
    reasons = {(r["split"], r["member"]): r["reason"] for r in rejected(tmp_path)}
    assert reasons == {
        ("train", f"{s}_caf\\xe9.JPEG"): "name is not valid UTF-8",
        ("train", too_long): "name longer than 255 bytes",
        ("train", f"{own}.tar"): "synset named like extract's own file filelist.txt",
        ("validation", "ILSVRC2012_val_00000002.JPEG"): "synset named like extract's own file filelist.txt",
        ("validation", "ILSVRC2012_val_00000003.JPEG"): "synset named like extract's own file rejected.jsonl",
    }
    out = tmp_path / "out"
    assert (out / "train" / "filelist.txt").read_text() == f"{s}/{s}_ok.JPEG\n"
    assert (out / "validation" / "filelist.txt").read_text() == f"{s}/ILSVRC2012_val_00000001.JPEG\n"
    assert (out / "rejected.jsonl").is_file()
    before = tree(out)
    assert run(tmp_path, raw) == first       # a rerun over the output reuses it and agrees
    assert tree(out) == before
    for split in ("train", "validation"):
        assert first[split]["members"] == first[split]["extracted"] + first[split]["rejected"]
