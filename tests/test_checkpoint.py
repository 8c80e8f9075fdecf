"""Safe checkpoint reading: the published pytorch-lightning 1.x layout loads without
Lightning; pickles that would run code are refused and nothing runs."""
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from models.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint, read_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RunsCode:
    """Unpickling this calls os.system, like a trojaned checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsFunction:
    """Unpickling this calls a Python function that writes a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _ref_ckpt(reference_dir):
    return os.path.join(reference_dir, "taming_small", "vqgan_image", "checkpoints", "last.ckpt")


def test_reference_lightning_1x_checkpoint_loads_without_lightning(reference_dir):
    # a fresh interpreter where importing pytorch_lightning/lightning fails, as if not installed
    code = (
        "import sys\n"
        "for m in ('pytorch_lightning', 'lightning', 'lightning_fabric'): sys.modules[m] = None\n"
        "from models.checkpoint import LightningStandIn, read_checkpoint, read_state_dict\n"
        f"ck = read_checkpoint({_ref_ckpt(reference_dir)!r})\n"
        "(key,) = ck['callbacks']\n"
        "assert key.__module__ == 'pytorch_lightning.callbacks.model_checkpoint', key\n"
        "assert issubclass(key, LightningStandIn) and key.__name__ == 'ModelCheckpoint'\n"
        "assert ck['callbacks'][key]['best_model_path'].endswith('last.ckpt')\n"
        f"sd, step = read_state_dict({_ref_ckpt(reference_dir)!r})\n"
        "assert step == 1234 and 'quantize.embedding.weight' in sd, step\n"
        "print(len(sd))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 100


@pytest.mark.parametrize("payload", [RunsCode, CallsFunction])
@pytest.mark.parametrize("zip_format", [True, False])
def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path, payload, zip_format):
    marker = tmp_path / "pwned"
    ckpt = {"state_dict": {"w": torch.zeros(2)}, "global_step": 1, "callbacks": {"x": payload(marker)}}
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    if zip_format:  # vetted before unpickling: the message names the callable
        assert ("system" if payload is RunsCode else "open") in str(err.value)
    assert not marker.exists()


def test_a_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="system") as err:
        read_checkpoint(path)
    assert "weights_only=False" not in str(err.value)  # never advise the unsafe path
    assert not marker.exists()


def test_lightning_names_get_inert_stand_ins(tmp_path, monkeypatch):
    # a class under the Lightning namespace, even one "called" with arguments, runs nothing
    class Fake:
        def __reduce__(self):
            return (Fake, ("rm -rf /",))

        def __init__(self, *args):
            raise AssertionError("must never be constructed")
    Fake.__module__, Fake.__qualname__ = "pytorch_lightning.utilities", "Fake"
    # pickle looks the class up by name when saving: fake modules, not the installed package
    fake_pkg, fake_mod = type(sys)("pytorch_lightning"), type(sys)("pytorch_lightning.utilities")
    fake_mod.Fake = Fake
    monkeypatch.setitem(sys.modules, "pytorch_lightning", fake_pkg)
    monkeypatch.setitem(sys.modules, "pytorch_lightning.utilities", fake_mod)
    path = tmp_path / "pl.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hparams": Fake.__new__(Fake)}, path)
    monkeypatch.undo()
    ck = read_checkpoint(path)
    assert type(ck["hparams"]).__name__ == "Fake" and ck["hparams"].args == ("rm -rf /",)
    assert read_state_dict(path)[0]["w"].item() == 1.0


def test_bare_state_dict_and_bad_files(tmp_path):
    torch.save({"a.weight": torch.ones(3)}, tmp_path / "sd.pt")
    sd, step = read_state_dict(tmp_path / "sd.pt")
    assert step is None and torch.equal(sd["a.weight"], torch.ones(3))
    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        read_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        read_checkpoint(tmp_path / "nope.ckpt")
    torch.save({"state_dict": {"a": [1, 2]}}, tmp_path / "lists.ckpt")
    with pytest.raises(ValueError, match="not tensors"):
        read_state_dict(tmp_path / "lists.ckpt")


def rezip(src, dst, compress=(), aliases=()):
    """Rewrite a torch.save zip member by member: those named in ``compress`` deflated, plus
    central-directory entries named ``aliases`` that point at the largest member's bytes."""
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dst, "w") as z_out:
        for info in z_in.infolist():
            kind = zipfile.ZIP_DEFLATED if info.filename.endswith(compress) and compress else zipfile.ZIP_STORED
            z_out.writestr(info.filename, z_in.read(info), compress_type=kind)
        largest = max(z_out.filelist, key=lambda info: info.file_size)
        for name in aliases:
            alias = zipfile.ZipInfo(name)
            for field in ("header_offset", "compress_type", "CRC", "compress_size", "file_size"):
                setattr(alias, field, getattr(largest, field))
            z_out.filelist.append(alias)


def test_compressed_or_overlapping_zip_members_are_refused_before_torch_reads_them(tmp_path):
    """torch.save stores members uncompressed; a deflated data.pkl (a zip bomb: 50 MB of pickle
    in 50 KB) or members that share bytes are refused before torch or its unpickler see them."""
    torch.save({"state_dict": {"w": torch.zeros(4)}, "pad": b"\0" * 50_000_000}, tmp_path / "big.ckpt")
    rezip(tmp_path / "big.ckpt", tmp_path / "bomb.ckpt", compress=("data.pkl",))
    assert os.path.getsize(tmp_path / "bomb.ckpt") < 200_000
    with pytest.raises(CheckpointError, match=r"bomb.ckpt: member big/data.pkl is compressed \(zip method 8\)"):
        read_checkpoint(tmp_path / "bomb.ckpt")

    torch.save({"state_dict": {"w": torch.zeros(2**18)}}, tmp_path / "one.ckpt")   # one 1 MB storage
    rezip(tmp_path / "one.ckpt", tmp_path / "aliased.ckpt", aliases=[f"one/data/{i}" for i in range(1, 9)])
    with zipfile.ZipFile(tmp_path / "aliased.ckpt") as z:
        assert len(z.infolist()) > 9          # a zip that zipfile itself lists
    with pytest.raises(CheckpointError, match="aliased.ckpt: its members claim .* more than the file's"):
        read_checkpoint(tmp_path / "aliased.ckpt")
    # the untouched file loads
    assert read_state_dict(tmp_path / "one.ckpt")[0]["w"].shape == (2**18,)


def test_a_tensor_claiming_more_bytes_than_its_storage_is_refused(tmp_path):
    """torch.save keeps an expanded view as 8 bytes of storage and a stride of 0: 2**31 elements
    that become 16 GiB as soon as anything copies them (issue 17: `quantize.used`)."""
    used = torch.zeros(1, dtype=torch.long).expand(2**31)
    torch.save({"state_dict": {"quantize.used": used}}, tmp_path / "stride0.ckpt")
    assert os.path.getsize(tmp_path / "stride0.ckpt") < 10_000
    with pytest.raises(CheckpointError, match=r"stride0.ckpt: tensor \['state_dict'\]\['quantize.used'\] of shape "
                                              r"\(2147483648,\) claims 17179869184 bytes but its storage holds 8"):
        read_state_dict(tmp_path / "stride0.ckpt")
    # views that stay within their storage (a slice, a transpose) are fine
    base = torch.arange(12.0)
    torch.save({"a": base[2:5], "b": base.view(3, 4).t(), "nested": [[{"c": base}]]}, tmp_path / "views.ckpt")
    ck = read_checkpoint(tmp_path / "views.ckpt")
    assert ck["a"].tolist() == [2.0, 3.0, 4.0] and ck["b"].shape == (4, 3)
