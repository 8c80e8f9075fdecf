"""The file primitives every layer writes and reads through: atomic writes keep a normal
file's mode; paths named by untrusted files are read only when they are regular files."""
import os
import stat
import threading

import pytest
import torch

from models.files import atomic_path, open_regular
from tasks.data.files import write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    write_text(tmp_path / "atomic.txt", "x")
    write_json(tmp_path / "atomic.json", {"a": 1})
    with atomic_path(tmp_path / "deep" / "model.pt") as tmp:   # what torch.save and PIL write through
        torch.save({"w": torch.zeros(2)}, tmp)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~mask
    for name in ("atomic.txt", "atomic.json", "deep/model.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_open_regular_refuses_fifos_devices_and_folders_without_blocking(tmp_path):
    fifo = tmp_path / "codes.npy"
    os.mkfifo(fifo)
    (tmp_path / "real.npy").write_bytes(b"data")
    os.symlink(tmp_path / "real.npy", tmp_path / "link.npy")
    results = {}

    def attempt():      # in a thread: if opening blocked, the test fails instead of hanging
        for path, what in ((fifo, "a FIFO"), ("/dev/zero", "a device"), (tmp_path, "a directory")):
            with pytest.raises(OSError, match=f"{path}: is {what}, not a regular file") as e:
                open_regular(path)
            results[what] = str(e.value)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "open_regular blocked"
    assert len(results) == 3
    with open_regular(tmp_path / "link.npy") as f:   # a symlink to a regular file is fine
        assert f.read() == b"data"
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
