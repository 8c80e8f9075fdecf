"""load_pretrained on checkpoints made by the original code (tests/reference) and
on a Lightning 2 checkpoint written like our training stage writes them."""
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.checkpoint import CheckpointError
from models.limits import ModelTooLarge
from models.pretrained import build_vqgan, load_pretrained, load_with_report
from models.vqgan import VQModel


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def ref(reference_dir):
    root = Path(reference_dir) / "taming_small"
    return root, torch.load(root / "expected.pt", weights_only=True)


def test_official_vqgan_folder_reproduces_the_original(ref):
    root, exp = ref
    model, report = load_with_report(root / "vqgan_image")
    assert isinstance(model, VQModel) and not model.training
    assert report.missing == [] and report.unexpected == [] and report.global_step == 1234
    assert report.ignored and all(k.startswith("loss.discriminator.") for k in report.ignored)
    with torch.no_grad():
        quant, emb_loss, indices = model.encode(exp["image"])
        xrec = model.decode(quant)
        assert torch.equal(indices, exp["indices"]) and indices.dtype == torch.int64
        assert rel_err(quant, exp["quant"]) < 1e-4
        assert rel_err(emb_loss.reshape(1), exp["emb_loss"]) < 1e-4  # legacy beta weighting
        assert rel_err(xrec, exp["xrec"]) < 1e-4
        assert rel_err(model.decode_indices(indices, (8, 8)), exp["xrec"]) < 1e-4


def test_checkpoint_plus_yaml_and_checkpoint_alone(ref, tmp_path):
    root, exp = ref
    ckpt = root / "vqgan_image" / "checkpoints" / "last.ckpt"
    (config,) = (root / "vqgan_image" / "configs").glob("*-project.yaml")
    flat = tmp_path / "elsewhere"
    flat.mkdir()
    shutil.copy(ckpt, flat / "model.ckpt")
    shutil.copy(config, flat / "model.yaml")
    for model in (load_pretrained(flat / "model.ckpt", config=flat / "model.yaml"), load_pretrained(ckpt)):
        with torch.no_grad():
            assert torch.equal(model.encode(exp["image"])[2], exp["indices"])
    with pytest.raises(FileNotFoundError, match="project.yaml"):
        load_pretrained(flat / "model.ckpt")  # no configs/ folder beside it


def test_official_drin_transformer_loads_without_its_stage_checkpoints(ref):
    root, exp = ref
    params = yaml.safe_load(next((root / "drin_transformer" / "configs").glob("*.yaml")).read_text())["model"]["params"]
    for stage in ("first_stage_config", "cond_stage_config"):
        assert not os.path.exists(params[stage]["params"]["ckpt_path"])  # named, absent, not needed
    model, report = load_with_report(root / "drin_transformer")
    assert report.missing == [] and report.unexpected == [] and report.ignored == []
    assert not model.training
    assert model.first_stage_model.quantize.embedding.weight.shape == (64, 8)
    assert model.cond_stage_model.encoder.conv_in.in_channels == 1
    with torch.no_grad():
        _, z_indices = model.encode_to_z(exp["image"])
        _, c_indices = model.encode_to_c(exp["depth"])
    assert torch.equal(z_indices, exp["z_indices"])
    assert torch.equal(c_indices, exp["c_indices"])


def _write_config(folder: Path, model_cfg: dict, name: str = "2026-01-01T00-00-00-project.yaml") -> Path:
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    path = folder / "configs" / name
    path.write_text(yaml.safe_dump({"model": model_cfg}))
    return path


def test_unknown_target_missing_keys_and_foreign_checkpoints(ref, tmp_path):
    root, _ = ref
    shutil.copytree(root / "vqgan_image" / "checkpoints", tmp_path / "run" / "checkpoints")
    cfg = yaml.safe_load(next((root / "vqgan_image" / "configs").glob("*.yaml")).read_text())["model"]

    _write_config(tmp_path / "run", {**cfg, "target": "os.system"})
    with pytest.raises(ValueError, match="unsupported model target 'os.system'"):
        load_pretrained(tmp_path / "run")

    # a newer config (sorted last) with a buffer the checkpoint lacks: reported, not silent
    extra = {**cfg, "params": {**cfg["params"], "colorize_nlabels": 3}}
    _write_config(tmp_path / "run", extra, "2026-02-01T00-00-00-project.yaml")
    with pytest.warns(UserWarning, match=r"1 missing key\(s\) \['colorize'\]"):
        load_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match="colorize"):
        load_pretrained(tmp_path / "run", strict=True)

    wrong = {**cfg, "params": {**cfg["params"], "n_embed": 32}}
    _write_config(tmp_path / "run", wrong, "2026-03-01T00-00-00-project.yaml")
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained(tmp_path / "run")

    unknown = {**cfg, "params": {**cfg["params"], "colour": 1}}
    _write_config(tmp_path / "run", unknown, "2026-04-01T00-00-00-project.yaml")
    with pytest.raises(ValueError, match="colour"):
        load_pretrained(tmp_path / "run")

    torch.save({"state_dict": {"head.weight": torch.zeros(2)}}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    _write_config(tmp_path / "run", cfg, "2026-05-01T00-00-00-project.yaml")
    with pytest.raises(ValueError, match="none of its 1 keys"):
        load_pretrained(tmp_path / "run")


def test_lightning2_checkpoint_from_our_training_layout_loads_the_same_way(tmp_path):
    """A real Lightning 2 Trainer writes the checkpoint; the module exposes the VQGAN's
    parts under the original's names (as tasks/lit_vqgan.py's checkpoints do) and the
    YAML uses our extended quantizer params (EMA codebook)."""
    import lightning as L

    dd = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
              ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    model_cfg = {"target": "taming.models.vqgan.VQModel",
                 "params": {"ddconfig": dd, "n_embed": 16, "embed_dim": 4, "quantizer": "ema",
                            "restart_threshold": 0.5, "image_key": "image",
                            "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                           "params": {"disc_start": 0, "perceptual_weight": 0.0}}}}

    class Lit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.vq = build_vqgan(model_cfg)

        def state_dict(self, *args, **kwargs):  # the original's key layout, without our attribute name
            return {k.removeprefix("vq."): v for k, v in super().state_dict(*args, **kwargs).items()}

        def training_step(self, batch, _):
            xrec, qloss, _ = self.vq(batch)
            return (batch - xrec).abs().mean() + qloss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    lit = Lit()
    data = torch.utils.data.DataLoader(torch.rand(4, 3, 16, 16), batch_size=2)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(lit, data)
    run = tmp_path / "vqgan_image"
    (run / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(run / "checkpoints" / "last.ckpt")
    _write_config(run, model_cfg, "vqgan_image-project.yaml")

    model, report = load_with_report(run)
    assert report.missing == [] and report.unexpected == [] and report.global_step == 2
    assert type(model.quantize).__name__ == "EMAVectorQuantizer"
    lit.vq.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.encode(x)[2], lit.vq.encode(x)[2])
        assert torch.allclose(model(x)[0], lit.vq(x)[0])
    assert torch.equal(model.quantize.cluster_size, lit.vq.quantize.cluster_size)


@pytest.fixture
def vqgan_run(ref, tmp_path):
    """A copy of the reference VQGAN folder and its YAML's model section, to tamper with."""
    root, _ = ref
    shutil.copytree(root / "vqgan_image", tmp_path / "run")
    (config,) = (tmp_path / "run" / "configs").glob("*.yaml")
    return tmp_path / "run", yaml.safe_load(config.read_text())["model"]


@pytest.mark.parametrize("params, message", [
    ({"n_embed": 2**31}, r"its parameters and buffers pass 17179869184 bytes \(at weight of shape \(2147483648, 8\)"),
    ({"ddconfig": {"ch": 2**16}}, "its parameters and buffers pass 17179869184 bytes"),
    ({"ddconfig": {"num_res_blocks": 10**9}}, "it has more than 10000 modules"),
])
def test_a_project_yaml_asking_for_a_huge_model_is_refused_before_anything_is_allocated(vqgan_run, params,
                                                                                        message):
    run, cfg = vqgan_run
    cfg["params"].update({k: ({**cfg["params"][k], **v} if isinstance(v, dict) else v) for k, v in params.items()})
    config = _write_config(run, cfg, "2027-01-01T00-00-00-project.yaml")
    with pytest.raises(ModelTooLarge, match=f"{config}: refusing to build the model it describes: {message}"):
        load_pretrained(run)
    with pytest.raises(ModelTooLarge, match=f"yaml: refusing to build the model it describes: {message}"):
        build_vqgan(cfg, "yaml")        # what every loader of a first stage builds with


def test_a_stride_0_used_code_list_with_a_remap_is_refused_before_it_is_copied(vqgan_run):
    """The attack of issue 17: `remap:` names an absent file, so the code list comes from the
    checkpoint's `quantize.used`, an expanded view of 2**31 codes (16 GiB once copied)."""
    run, cfg = vqgan_run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"]["quantize.used"] = torch.zeros(1, dtype=torch.long).expand(2**31)
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    _write_config(run, {**cfg, "params": {**cfg["params"], "remap": "absent_used_codes.npy"}},
                  "2027-01-01T00-00-00-project.yaml")
    with pytest.raises(CheckpointError, match=r"last.ckpt: tensor \['state_dict'\]\['quantize.used'\].* claims "
                                              r"17179869184 bytes but its storage holds 8"):
        load_pretrained(run)


def test_remap_files_must_be_regular_and_fit_the_codebook(vqgan_run, tmp_path):
    """`remap:` is a path from a file: a FIFO would block the loader for ever, /dev/zero never
    ends; a .npy declaring more codes than the codebook has is refused from its header."""
    run, cfg = vqgan_run
    os.mkfifo(tmp_path / "fifo.npy")
    np.save(tmp_path / "too_many.npy", np.arange(65))                 # the codebook has 64 entries
    header_only = tmp_path / "declared.npy"                          # a header claiming 2**40 codes
    np.save(header_only, np.arange(3))
    header = header_only.read_bytes().replace(b"(3,)", b"(1099511627776,)", 1)
    header_only.write_bytes(header)
    np.save(tmp_path / "floats.npy", np.zeros(4))
    np.save(tmp_path / "good.npy", np.arange(0, 64, 2))
    cases = {"fifo.npy": "is a FIFO, not a regular file", "/dev/zero": "is a device, not a regular file",
             "too_many.npy": r"between 1 and n_embed=64 used codes, got shape \(65,\)",
             "declared.npy": r"got shape \(1099511627776,\)", "floats.npy": "code ids must be integers"}
    errors = {}

    def attempt():     # in a thread: a loader blocked on the FIFO fails the test instead of hanging it
        for i, name in enumerate(cases):
            remap = name if name.startswith("/") else str(tmp_path / name)
            _write_config(run, {**cfg, "params": {**cfg["params"], "remap": remap}}, f"2027-0{i + 1}-01-project.yaml")
            try:
                load_pretrained(run)
            except CheckpointError as e:
                errors[name] = str(e)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(600)
    assert not thread.is_alive(), "loading blocked on a remap path"
    assert set(errors) == set(cases)
    for name, message in cases.items():
        assert re.search(f"params for taming.models.vqgan.VQModel do not fit: .*{message}", errors[name]), errors[name]
    _write_config(run, {**cfg, "params": {**cfg["params"], "remap": str(tmp_path / "good.npy")}}, "2028-project.yaml")
    with pytest.warns(UserWarning, match="quantize.used"):     # the reference was trained without a remap
        model = load_pretrained(run)
    assert model.quantize.used.tolist() == list(range(0, 64, 2))
