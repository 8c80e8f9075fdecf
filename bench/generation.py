"""Sampling through tasks/generation (what `taming sample-model`, the `sample` stage and the app
run) against models.sampling.generate, and the sample stage's peak memory against the
number of samples. Both measured side by side in one run.

1. tokens/s: bench/sampling.py's setting (GPT 8 layers x 512 wide x 8 heads, vocab 1024,
   a 16x16 grid after one class token, batch 8, top-k 100, top-p 0.95) as a
   class-conditional model folder with random weights, sampled by
   tasks.generation.tokens.sample_tokens (the command's token loop) and by
   models.sampling.generate on the same GPT, alternating, best of --repeats each. The
   whole command (sampling + VQGAN decoding + PNG writing) is timed too.
2. peak RSS of `taming sample` (its own process; wait4's ru_maxrss) on the demo's sizes
   (params.yaml: 16 conditions x 4 samples, random weights, rendered scenes) against 10x
   the samples per condition.

    .venv/bin/python bench/generation.py [--threads 2] [--repeats 2] [--skip-memory]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from models.gpt import GPT, GPTConfig
from models.net2net import Net2NetTransformer
from models.sampling import generate
from models.sampling_settings import SamplingSettings
from models.vqgan import VQModel

REPO = Path(__file__).resolve().parents[1]

SETTINGS = SamplingSettings(top_k=100, top_p=0.95)
NET2NET = "taming.models.cond_transformer.Net2NetTransformer"


def vq_config(resolution: int, ch_mult: list[int], n_embed: int, channels: int = 3) -> dict:
    ddconfig = {"double_z": False, "z_channels": 32, "resolution": resolution, "in_channels": channels,
                "out_ch": channels, "ch": 32, "ch_mult": ch_mult, "num_res_blocks": 1, "attn_resolutions": [],
                "dropout": 0.0}
    return {"target": "taming.models.vqgan.VQModel", "params": {"embed_dim": 32, "n_embed": n_embed,
                                                               "ddconfig": ddconfig}}


def write_folder(root: Path, gpt: dict, first: dict, cond_key: str, cond: dict | str, cond_vq: dict | None = None,
                 seed: int = 0) -> Path:
    """A transformer folder in the original's layout with random weights."""
    torch.manual_seed(seed)
    first_stage = VQModel(**first["params"])
    cond_stage = VQModel(**cond_vq["params"]) if cond_vq else None
    net = Net2NetTransformer(GPT(GPTConfig(**gpt)), first_stage, cond_stage, cond_stage_key=cond_key)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("cond_stage_model.") or cond_vq}
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "global_step": 0}, root / "checkpoints" / "last.ckpt")
    params = {"cond_stage_key": cond_key,
              "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": gpt},
              "first_stage_config": first, "cond_stage_config": cond_vq or cond}
    (root / "configs" / "bench-project.yaml").write_text(yaml.safe_dump({"model": {"target": NET2NET,
                                                                                    "params": params}}))
    return root


def best_tokens_per_second(run, tokens: int, repeats: int) -> list[float]:
    rates = []
    for seed in range(repeats):
        start = time.perf_counter()
        run(seed)
        rates.append(tokens / (time.perf_counter() - start))
    return rates


def speed(args, tmp: Path) -> None:
    from tasks import cli
    from tasks.generation import conditions as cond
    from tasks.generation.model import SamplingModel
    from tasks.generation.tokens import sample_tokens

    grid, batch = 16, args.batch
    gpt = {"vocab_size": 1024, "block_size": grid * grid + 1, "n_layer": 8, "n_head": 8, "n_embd": 512}
    folder = write_folder(tmp / "cin_bench", gpt, vq_config(grid * 16, [1, 1, 1, 1, 1], 1024), "class_label",
                          {"target": "taming.modules.util.Labelator", "params": {"n_classes": 1000}})
    model = SamplingModel.open(folder, "cpu")
    c = torch.cat([cond.class_condition(model, 9).tokens] * batch)
    steps = grid * grid
    print(f"GPT 8L x 512, vocab 1024, batch {batch}, {steps} tokens per sample, top-k 100, top-p 0.95, "
          f"{torch.get_num_threads()} threads")
    gpt_module = model.net.transformer
    generate(gpt_module, c, 8, SETTINGS)  # warm-up
    direct, layer = [], []
    for _ in range(2):  # alternate, so a machine that gets busier or quieter shows in both
        direct += best_tokens_per_second(
            lambda s: generate(gpt_module, c, steps, SETTINGS, generator=torch.Generator().manual_seed(s)),
            batch * steps, args.repeats)
        layer += best_tokens_per_second(
            lambda s: sample_tokens(model, c, batch, (grid, grid), SETTINGS, model.generator(s)),
            batch * steps, args.repeats)
    print(f"  models.sampling.generate:              {', '.join(f'{x:.0f}' for x in direct)} tokens/s")
    print(f"  tasks.generation.sample_tokens:        {', '.join(f'{x:.0f}' for x in layer)} tokens/s")
    start = time.perf_counter()
    cli.main(["sample-model", str(folder), "--classes", "9", "-n", str(batch), "--batch-size", str(batch),
              "-k", "100", "-p", "0.95", "-o", str(tmp / "out")])
    whole = batch * steps / (time.perf_counter() - start)
    print(f"generate {max(direct):.0f} tokens/s, the command's token loop {max(layer):.0f} tokens/s: "
          f"ratio {max(layer) / max(direct):.3f} (target >= 0.90)")
    print(f"the whole command (model loading, sampling, decoding {batch} pictures of 256 px, PNGs): "
          f"{whole:.0f} tokens/s")


def peak_rss_mb(cmd: list[str], cwd: Path) -> float:
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return usage.ru_maxrss / 1024


def memory(tmp: Path) -> None:
    from tasks.config.params import validate
    from tasks.data.scenes import write_extracted_dataset

    config = validate(REPO / "params.yaml")
    image, depth, t = config.vqgan["image"], config.vqgan["depth"], config.transformer
    write_extracted_dataset(tmp / "scenes", n_train=1, n_val=config.data.demo.n_val, classes=config.data.demo.classes,
                            resolution=config.data.demo.resolution)
    tokens = image.grid[0] * image.grid[1]
    gpt = {"vocab_size": max(image.n_embed, depth.n_embed), "block_size": 2 * tokens, "n_layer": t.n_layer,
           "n_head": t.n_head, "n_embd": t.n_embd}
    folder = write_folder(tmp / "drin_demo", gpt, {"target": "taming.models.vqgan.VQModel",
                                                   "params": image.model_params()}, "depth", "",
                          {"target": "taming.models.vqgan.VQModel", "params": depth.model_params()})
    s = config.sample
    base = [sys.executable, "-m", "tasks.cli", "sample", "--params", str(REPO / "params.yaml"),
            "--transformer", str(folder), "--data", str(tmp / "scenes" / "data")]
    demo = peak_rss_mb([*base, "--out", str(tmp / "s1")], tmp)
    more = peak_rss_mb([*base, "-S", f"sample.per_condition={10 * s.per_condition}", "--out", str(tmp / "s10")], tmp)
    n1, n10 = (len(list((tmp / d / "images").glob("*.png"))) for d in ("s1", "s10"))
    print(f"taming sample, peak RSS: {n1} samples {demo:.0f} MB, {n10} samples {more:.0f} MB: "
          f"ratio {more / demo:.3f} (target <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        speed(args, Path(tmp))
        if not args.skip_memory:
            memory(Path(tmp))


if __name__ == "__main__":
    main()
