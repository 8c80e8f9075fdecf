"""tokenize + train-transformer on a tiny real dataset with tiny VQGANs trained by the stage."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from params_files import write_params
from scene_data import make_scene_data
from training_runs import differing_tensors, history, run_stage, start_paused

from models.checkpoint import read_state_dict
from models.files import sha256_file
from models.pretrained import load_with_report
from tasks import tokenize_images as tokenize
from tasks import train_transformer
from tasks.config.params import vqgan_config
from tasks.config.schema import TokenizeConfig
from tasks.config.typed import build
from tasks.data.token_store import TokenDataset, list_parts, read_meta
from tasks.training.lit_transformer import LitTransformer, warmup_cosine

REPO = Path(__file__).resolve().parents[1]
VQ = {"resolution": 32, "n_embed": 32, "embed_dim": 8, "batch_size": 4, "max_steps": 2, "val_every": 2, "ckpt_every": 2,
      "ddconfig": {"z_channels": 8, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1},
      "loss": {"perceptual_weight": 0.0, "disc_start": 100, "disc_ndf": 8}}
GPT = {"n_layer": 1, "n_head": 2, "n_embd": 32, "batch_size": 4, "max_steps": 4, "val_every": 2, "ckpt_every": 2,
       "warmup_steps": 1}


@pytest.fixture(scope="module")
def vqgans(tmp_path_factory):
    """A scene dataset with image, depth and segmentation VQGANs trained (2 steps) by the stage itself."""
    root = make_scene_data(tmp_path_factory.mktemp("tokens"), n_train=3, n_val=1, classes=2)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        from tasks.train_vqgan import run
        for name in ("image", "depth", "segmentation"):
            run(vqgan_config(name, {**VQ, "n_classes": 12}))
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def repo(vqgans, tmp_path, monkeypatch):
    """A private copy (tokenize/train write into data/)."""
    shutil.copytree(vqgans, tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    return tmp_path / "repo"


def _tokenize(**kw):
    return build(TokenizeConfig, {"rows_per_part": 2, "batch_size": 4, **kw}, "tokenize")


def test_tokenize_shards_resume_and_record_sources(repo):
    cfg = _tokenize(extra_crops=1)
    first = tokenize.run(cfg, "depth", splits=("train",), shard=1, num_shards=2)
    assert [p.name for p in list_parts("data/tokens/train")] == ["part-00001.parquet"]  # parts 1, 3, ... of 0..2
    second = tokenize.run(cfg, "depth", splits=("train",), shard=0, num_shards=2)
    assert (first["train"]["written"], second["train"]["written"]) == (1, 2)  # 6 images, 2 per part
    assert tokenize.run(cfg, "depth", splits=("train",))["train"]["written"] == 0  # all parts done: nothing redone
    Path("data/tokens/train/part-00002.parquet").unlink()
    assert tokenize.run(cfg, "depth", splits=("train",))["train"]["written"] == 1

    ds = TokenDataset("data/tokens/train")
    assert len(ds) == 6 * 3  # centre crop, its mirror, one extra crop
    assert ds.meta.image.sha256 == sha256_file("data/vqgan/image/checkpoints/last.ckpt")
    assert ds.meta.cond.sha256 == sha256_file("data/vqgan/depth/checkpoints/last.ckpt")
    assert (ds.meta.image.grid, ds.meta.cond.kind, ds.meta.size) == ((8, 8), "depth", 32)
    assert sorted(set(ds.class_label.tolist())) == [0, 1]

    # the tokens are exactly what the frozen VQGANs give for the centre crop and its mirror
    from models.pretrained import load_pretrained
    from tasks.data.datasets import ImageNetDataset
    sample = ImageNetDataset("data/dataset/image", "train", size=32, depth_root="data/dataset/depth")[0]
    image_vq, depth_vq = load_pretrained("data/vqgan/image"), load_pretrained("data/vqgan/depth")
    rows = {a: i for i, a in enumerate(ds.aug) if ds.ids[i] == sample["relpath"]}
    with torch.no_grad():
        for aug, flip in ((0, lambda x: x), (1, lambda x: torch.flip(x, [-1]))):
            assert image_vq.encode(flip(sample["image"])[None])[2][0].tolist() == ds.image_tokens[rows[aug]].tolist()
            assert depth_vq.encode(flip(sample["depth"])[None])[2][0].tolist() == ds.cond_tokens[rows[aug]].tolist()


def test_changed_settings_remake_the_parts_without_duplicates_or_leftovers(repo):
    """A rerun used to keep parts made with other settings: flipped rows after hflip was
    turned off, and duplicate rows after rows_per_part changed."""
    tokenize.run(_tokenize(hflip=True), "depth", splits=("train",))
    assert len(TokenDataset("data/tokens/train")) == 6 * 2
    again = tokenize.run(_tokenize(hflip=False), "depth", splits=("train",))
    assert again["train"]["written"] == 3                      # every part re-made
    ds = TokenDataset("data/tokens/train")
    assert len(ds) == 6 and set(ds.aug.tolist()) == {0} and ds.meta.rows.hflip is False

    bigger = tokenize.run(_tokenize(hflip=False, rows_per_part=4), "depth", splits=("train",))
    assert (bigger["train"]["parts"], bigger["train"]["written"]) == (2, 2)
    assert [p.name for p in list_parts("data/tokens/train")] == ["part-00000.parquet", "part-00001.parquet"]
    ds = TokenDataset("data/tokens/train")
    assert len(ds) == 6 and len(set(ds.ids)) == 6               # no row twice

    assert tokenize.run(_tokenize(hflip=False, rows_per_part=4, seed=1), "depth", splits=("train",))["train"]["written"] == 2
    # a changed image (same name, new bytes) re-makes just its part
    first = sorted(Path("data/dataset/image/train/filelist.txt").read_text().split())[0]
    image = Path("data/dataset/image/train") / first
    image.write_bytes(image.read_bytes())
    assert tokenize.run(_tokenize(hflip=False, rows_per_part=4, seed=1), "depth", splits=("train",))["train"]["written"] == 1
    # training crops cut from a larger rescale are other rows: every part re-made
    assert tokenize.run(_tokenize(hflip=False, rows_per_part=4, seed=1, rescale=40), "depth",
                        splits=("train",))["train"]["written"] == 2
    assert TokenDataset("data/tokens/train").meta.rows.rescale == 40


def test_a_sharded_split_gets_its_manifest_from_the_last_shard(repo):
    cfg = _tokenize(hflip=False, rows_per_part=1)   # 2 validation images: 2 parts
    first = tokenize.run(cfg, "depth", splits=("validation",), shard=0, num_shards=2)
    assert first["validation"]["complete"] is False and not Path("data/tokens/validation/manifest.json").exists()
    with pytest.raises(ValueError, match="manifest.json: missing"):
        TokenDataset("data/tokens/validation")
    assert tokenize.run(cfg, "depth", splits=("validation",), shard=1, num_shards=2)["validation"]["complete"] is True
    assert len(TokenDataset("data/tokens/validation")) == 2


def test_tokenize_refuses_a_shard_that_is_being_written_and_runs_the_others(repo):
    from tasks.runtime import locks
    with locks.hold(Path("data/tokens"), "train", "shard-0-of-2"):     # what a running shard 0 holds
        with pytest.raises(locks.Busy, match=r"data/tokens \(train, shard-0-of-2\) is being written by another "
                                             rf"run: pid {os.getpid()} on "):
            tokenize.run(_tokenize(), "depth", splits=("train",), shard=0, num_shards=2)
        assert tokenize.run(_tokenize(), "depth", splits=("train",), shard=1, num_shards=2)["train"]["written"] == 1


def test_damaged_tokens_stop_training_before_it_starts_naming_the_file(repo, capsys):
    """In-range token flips used to train with rc=0."""
    tokenize.run(_tokenize(), "depth")
    part = Path("data/tokens/train/part-00001.parquet")
    table = pq.read_table(part)
    tokens = np.stack(table.column("image_tokens").to_pylist()).astype(np.uint16)
    tokens[0, 5] = (tokens[0, 5] + 1) % 32
    column = pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1), type=pa.uint16()), tokens.shape[1])
    pq.write_table(table.set_column(3, table.schema.field("image_tokens"), column), part)
    _transformer_params(GPT)
    from tasks.cli import main
    assert main(["train-transformer"]) == 1
    err = capsys.readouterr().err
    assert f"{part}: contents changed since tokenize wrote it" in err and "Traceback" not in err
    assert not Path("data/transformer/checkpoints").exists()


def test_segmentation_tokens_encode_one_hot_label_maps(repo):
    tokenize.run(_tokenize(hflip=False), "segmentation", splits=("validation",))
    ds = TokenDataset("data/tokens/validation")
    assert (ds.meta.cond.kind, ds.meta.cond.vocab_size) == ("segmentation", 32)
    from models.pretrained import load_pretrained
    from tasks.data.datasets import ImageNetDataset
    sample = ImageNetDataset("data/dataset/image", "validation", size=32, segmentation_root="data/dataset/segmentation")[0]
    one_hot = torch.nn.functional.one_hot(sample["segmentation"], 12).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        tokens = load_pretrained("data/vqgan/segmentation").encode(one_hot)[2][0]
    assert tokens.tolist() == ds.cond_tokens[ds.ids.index(sample["relpath"])].tolist()


def test_class_and_unconditional_tokens(repo):
    tokenize.run(_tokenize(hflip=False), "class", splits=("validation",))
    ds = TokenDataset("data/tokens/validation")
    assert (ds.meta.cond.kind, ds.meta.cond.vocab_size, ds.meta.cond.sha256) == ("class", 2, None)
    np.testing.assert_array_equal(ds.cond_tokens[:, 0], ds.class_label)
    shutil.rmtree("data/tokens")
    tokenize.run(_tokenize(), "none", splits=("validation",))
    assert read_meta(list_parts("data/tokens/validation")[0]).cond.kind == "none"


TRAIN_AND_CHECK = """
import sys
from tasks.config.typed import build
from tasks.config.schema import TransformerConfig
from tasks.train_transformer import run
run(build(TransformerConfig, {gpt!r}, "transformer"))
loaded = sorted(m for m in sys.modules if m in ("models.vqgan", "models.modules", "models.pretrained", "models.lpips"))
assert not loaded, f"train-transformer imported VQGAN code: {{loaded}}"
print("NO-VQGAN-OK")
"""


def test_trains_from_parquet_only_and_loads_like_an_official_checkpoint(repo):
    tokenize.run(_tokenize(), "depth")
    done = subprocess.run([sys.executable, "-c", TRAIN_AND_CHECK.format(gpt=GPT)], cwd=repo, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "NO-VQGAN-OK" in done.stdout, done.stderr[-3000:]

    ckpt = torch.load("data/transformer/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    project = yaml.safe_load(Path("data/transformer/configs/transformer-project.yaml").read_text())["model"]
    assert project["target"] == "taming.models.cond_transformer.Net2NetTransformer"
    assert project["params"]["first_stage_config"]["params"]["ckpt_path"] == "data/vqgan/image/checkpoints/last.ckpt"
    assert project["params"]["transformer_config"]["params"]["block_size"] == 64 + 64

    model, report = load_with_report("data/transformer")
    assert (report.missing, report.unexpected) == ([], [])
    vq = torch.load("data/vqgan/depth/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.cond_stage_model.encoder.conv_in.weight, vq["encoder.conv_in.weight"])
    assert Path("data/dvclive/transformer/metrics.json").is_file()


def test_tokens_from_other_vqgan_weights_are_refused(repo, capsys):
    tokenize.run(_tokenize(), "depth", splits=("train",))
    ckpt_path = Path("data/vqgan/image/checkpoints/last.ckpt")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["state_dict"]["quantize.embedding.weight"] += 1  # "retrained" without re-tokenizing
    torch.save(ckpt, ckpt_path)
    write_params(Path("params.yaml"), vqgan={"image": VQ, "depth": VQ}, transformer=GPT, top_k=None,
                 evaluate={"resolution": 32})
    from tasks.cli import main
    assert main(["train-transformer"]) == 1
    err = capsys.readouterr().err
    assert "image tokens were made by a VQGAN checkpoint with SHA-256" in err
    assert "rerun `taming tokenize`" in err and not Path("data/transformer/checkpoints").exists()


# dropout and pkeep draw from the RNG; a log row every step
RESUMABLE = {**GPT, "max_steps": 12, "ckpt_every": 4, "val_every": 6, "pkeep": 0.8, "embd_pdrop": 0.1,
             "resid_pdrop": 0.1, "attn_pdrop": 0.1}


def _transformer_params(gpt: dict) -> None:
    """A params file the CLI's whole-file check accepts, for the depth-conditioned test data."""
    Path("params.yaml").write_text(yaml.safe_dump({
        "conditioning": "depth", "annotate": {"depth": {"model": "groundtruth"}}, "vqgan": {"image": VQ, "depth": VQ},
        "transformer": gpt, "evaluate": {"resolution": VQ["resolution"]}}))


def _resume_ckpt_step() -> int:
    return torch.load("data/transformer/resume/last.ckpt", weights_only=True)["global_step"]


def test_a_run_killed_and_resumed_equals_an_uninterrupted_one_bit_for_bit(repo):
    """Every tensor of the final checkpoint (weights, AdamW moments, RNG state) and every
    logged value; a resumed run used to differ in 21 of 320 tensors (data order, RNG)."""
    tokenize.run(_tokenize(), "depth")
    _transformer_params(RESUMABLE)
    run_stage(repo, "train-transformer")
    shutil.move("data/transformer", "uninterrupted")
    shutil.move("data/dvclive/transformer", "uninterrupted-dvclive")

    run_stage(repo, "train-transformer", kill_at_step=6)       # mid-way between the checkpoints at 4 and 8
    assert _resume_ckpt_step() == 4
    rerun = run_stage(repo, "train-transformer")
    assert "Restored all states" in rerun.stdout + rerun.stderr
    assert differing_tensors(Path("uninterrupted/checkpoints/last.ckpt"),
                             Path("data/transformer/checkpoints/last.ckpt")) == []
    # DVCLive's history: the rows before the kill kept, the ones after the checkpoint logged once
    assert history(Path("data/dvclive/transformer")) == history(Path("uninterrupted-dvclive"))
    assert len(history(Path("uninterrupted-dvclive"))["plots/metrics/train/loss.tsv"]) == 12   # one row a step


def test_a_killed_run_whose_tokens_changed_starts_afresh_saying_why(repo):
    """It used to resume from a checkpoint trained on the old tokens."""
    tokenize.run(_tokenize(), "depth")
    _transformer_params(RESUMABLE)
    run_stage(repo, "train-transformer", kill_at_step=6)
    assert _resume_ckpt_step() == 4
    ckpt_path = Path("data/vqgan/image/checkpoints/last.ckpt")        # the image VQGAN retrained ...
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["state_dict"]["quantize.embedding.weight"] *= 1.5
    torch.save(ckpt, ckpt_path)
    tokenize.run(_tokenize(), "depth")                                 # ... and the images re-tokenized
    rerun = run_stage(repo, "train-transformer")
    log = rerun.stdout + rerun.stderr
    assert "train-transformer: not resuming from data/transformer/resume/last.ckpt: its inputs changed (" in log
    assert "image VQGAN" in log and "tokens/train" in log and "Restored all states" not in log
    assert torch.load("data/transformer/checkpoints/last.ckpt", weights_only=True)["global_step"] == 12


def test_raising_max_steps_continues_a_finished_run(repo):
    """The run continues from its final checkpoint (the learning-rate schedule stretched to
    the new max_steps) with its history; it used to start over."""
    tokenize.run(_tokenize(), "depth")
    _transformer_params({**RESUMABLE, "max_steps": 6})
    run_stage(repo, "train-transformer")
    shutil.rmtree("data/transformer/checkpoints")       # what `dvc repro` does before it reruns the stage
    shutil.rmtree("data/dvclive/transformer")
    _transformer_params(RESUMABLE)
    log = run_stage(repo, "train-transformer")
    assert "train-transformer: continuing the finished run from step 6 to 12" in log.stdout
    assert "Restored all states" in log.stdout + log.stderr
    assert torch.load("data/transformer/checkpoints/last.ckpt", weights_only=True)["global_step"] == 12
    rows = history(Path("data/dvclive/transformer"))["plots/metrics/train/loss.tsv"]
    steps = [step for step, _ in rows]
    assert len(steps) == 12 and steps == sorted(steps) and steps[-1] == 11     # one row a step, in order


def test_a_second_run_is_refused_while_one_trains(repo, capsys):
    tokenize.run(_tokenize(), "depth")
    _transformer_params(RESUMABLE)
    flag, release = repo / "paused", repo / "release"
    first = start_paused(repo, "train-transformer", step=6, flag=flag, release=release)
    try:
        from tasks.cli import main
        assert main(["train-transformer"]) == 1
        err = capsys.readouterr().err
        assert f"data/transformer is being written by another run: pid {first.pid} on " in err
    finally:
        release.write_text("go")
        assert first.wait(timeout=600) == 0
    assert torch.load("data/transformer/checkpoints/last.ckpt", weights_only=True)["global_step"] == 12


def test_a_non_finite_loss_stops_training_naming_the_stage_step_and_value(repo):
    """A learning rate of 1e30 used to finish with rc=0 and NaN weights."""
    from tasks.config.schema import TransformerConfig
    from tasks.training.trainer import NonFiniteError
    tokenize.run(_tokenize(), "depth")
    cfg = build(TransformerConfig, {**GPT, "base_learning_rate": 1e30, "max_steps": 6}, "transformer")
    with pytest.raises(NonFiniteError, match=r"train-transformer: (the loss is (nan|-?inf)|parameter \S+ holds "
                                             r"(nan|-?inf)) at step \d of 6; training stopped"):
        train_transformer.run(cfg)
    assert not Path("data/transformer/checkpoints").exists()


def test_loss_decreases_on_a_repeated_batch():
    torch.manual_seed(0)
    module = LitTransformer(gpt={"vocab_size": 16, "block_size": 12, "n_layer": 1, "n_head": 2, "n_embd": 32},
                            unconditional=False, pkeep=1.0, cond_dropout=0.0, null_token=None, learning_rate=3e-3,
                            weight_decay=0.01, betas=(0.9, 0.95), warmup_steps=2, max_steps=40, min_lr_ratio=0.1,
                            stage_checkpoints={})
    batch = {"image_tokens": torch.randint(0, 16, (4, 8)), "cond_tokens": torch.randint(0, 16, (4, 4))}
    module.eval()
    before = module._loss(batch).item()
    L.Trainer(accelerator="cpu", max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, torch.utils.data.DataLoader([batch] * 40, batch_size=None))
    module.eval()
    assert module._loss(batch).item() < 0.5 * before


def test_label_dropout_adds_a_null_token_to_the_vocabulary():
    from tasks.data.token_store import Codes, RowSettings, TokenMeta
    meta = TokenMeta(image=Codes("image", 16, (2, 2)), cond=Codes("class", 16, (1, 1)), size=8,
                     rows=RowSettings(hflip=False, extra_crops=0, seed=0, rows_per_part=1))
    assert train_transformer.Vocabulary.of(meta, 0.0) == train_transformer.Vocabulary(16, 5, None)
    assert train_transformer.Vocabulary.of(meta, 0.1) == train_transformer.Vocabulary(17, 5, 16)


def test_decay_split_and_schedule():
    from models.gpt import GPT as MinGPT
    from models.gpt import GPTConfig
    gpt = MinGPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8))
    decay, no_decay = gpt.optim_groups(0.01)
    names = {id(p): n for n, p in gpt.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n, m in gpt.named_modules() if isinstance(m, torch.nn.Linear) for n in [n + ".weight"]}
    assert {"tok_emb.weight", "pos_emb", "ln_f.weight", "ln_f.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(gpt.parameters()))
    assert no_decay["weight_decay"] == 0.0
    factors = [warmup_cosine(s, 10, 110, 0.1) for s in (0, 9, 10, 60, 110, 200)]
    assert factors == pytest.approx([0.1, 1.0, 1.0, 0.55, 0.1, 0.1])


def test_checkpoint_layout_round_trip_restores_the_transformer(vqgans):
    """What resume relies on: the saved original-layout state_dict loads back strictly."""
    stages = {"first_stage_model": str(vqgans / "data/vqgan/image/checkpoints/last.ckpt")}
    kwargs = dict(gpt={"vocab_size": 32, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16}, unconditional=True,
                  pkeep=1.0, cond_dropout=0.0, null_token=None, learning_rate=1e-3, weight_decay=0.01,
                  betas=(0.9, 0.95), warmup_steps=1, max_steps=4, min_lr_ratio=0.1, stage_checkpoints=stages)
    saved = LitTransformer(**kwargs)
    checkpoint = {"state_dict": saved.state_dict()}
    saved.on_save_checkpoint(checkpoint)
    assert "transformer.tok_emb.weight" in checkpoint["state_dict"]
    assert "first_stage_model.encoder.conv_in.weight" in checkpoint["state_dict"]
    assert not any(k.startswith(("model.", "first_stage_model.loss.")) for k in checkpoint["state_dict"])

    restored = LitTransformer(**kwargs)
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"], strict=True)
    torch.testing.assert_close(restored.model.transformer.head.weight, saved.model.transformer.head.weight)


def test_fine_tuning_starts_from_a_published_transformer(repo, tmp_path):
    """transformer.init_from: the GPT of another run starts this one; a different architecture
    or a first stage other than the tokens' is refused, naming the setting."""
    from tasks.config.schema import TransformerConfig
    from tasks.runtime.errors import StageError
    from tasks.train_transformer import init_weights

    tokenize.run(_tokenize(), "depth")
    train_transformer.run(build(TransformerConfig, GPT, "transformer"))
    published = tmp_path / "published"
    shutil.copytree("data/transformer", published)
    source, _ = read_state_dict(published / "checkpoints/last.ckpt")
    meta = TokenDataset("data/tokens/train").meta
    vocab = train_transformer.Vocabulary.of(meta, 0.0)
    cfg = build(TransformerConfig, {**GPT, "init_from": str(published)}, "transformer")

    def fresh(**gpt):
        return LitTransformer(gpt={**train_transformer.gpt_params(cfg, vocab), **gpt}, unconditional=False, pkeep=1.0,
                              cond_dropout=0.0, null_token=None, learning_rate=1e-3, weight_decay=0.0,
                              betas=(0.9, 0.95), warmup_steps=1, max_steps=4, min_lr_ratio=0.1, stage_checkpoints={})

    module = fresh()
    init_weights(module, cfg, meta)
    for k, v in module.model.transformer.state_dict().items():
        assert torch.equal(v, source[f"transformer.{k}"]), k
    with pytest.raises(StageError, match="does not fit this run's transformer settings"):
        init_weights(fresh(n_embd=64), cfg, meta)
    other = torch.load("data/vqgan/image/checkpoints/last.ckpt", weights_only=True)
    other["state_dict"]["quantize.embedding.weight"] += 1
    torch.save(other, "data/vqgan/image/checkpoints/last.ckpt")
    with pytest.raises(StageError, match="its first stage is not the VQGAN that made the tokens"):
        init_weights(fresh(), cfg, meta)
