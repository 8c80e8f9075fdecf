"""Command `reconstruct`: run images through a VQGAN folder, as the original's reconstruction
notebook does, and say how faithful it is.

    taming reconstruct data/vqgan/image photo.jpg more/              # -> photo_reconstruction.png beside it
    taming reconstruct logs/vqgan_imagenet_f16_16384 imgs/ -o rec/ --resolution 256

The folder is a VQGAN (image or depth: the input is what its first layer takes) or a
transformer, whose first stage is used; local or s3://. Each image (a folder stands for
the PNG/JPEG files in it) is encoded to tokens and decoded again at its own size
centre-cropped to a multiple of the downsampling factor, or fitted to `--resolution`.
Depth VQGANs read depth maps (the pipeline's RGBA float32 PNG, or 8/16-bit grey),
normalised as in training. Per image: PSNR (dB) and SSIM of the reconstruction against
the input as the model saw it; overall: their means and the codebook usage (codes used,
perplexity) over all images. Reconstructions go beside the inputs as
`<name>_reconstruction.png`, or into `--outdir` as `<name>.png` with `reconstructions.json`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tasks.runtime.errors import StageError

SUFFIX = "_reconstruction"
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def input_files(paths: list[str]) -> list[Path]:
    """Files as given; a folder: its image files (not earlier reconstructions), sorted."""
    files = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_TYPES
                            and not p.stem.endswith(SUFFIX))
        elif given.is_file():
            files.append(given)
        else:
            raise FileNotFoundError(f"{given}: no such file or folder")
    if not files:
        raise StageError(f"no images in {', '.join(paths)}")
    return files


def load_vqgan(path: str, device):
    """The VQGAN of a folder: a VQGAN folder's model, or a transformer's first stage."""
    from models.folder import ModelFolder
    from models.pretrained import load_pretrained
    from models.vqgan import VQSegmentationModel

    folder = ModelFolder.open(path)
    model = load_pretrained(folder.checkpoint, folder.config_path, map_location=device)
    if folder.is_transformer:
        model = model.first_stage_model
    if isinstance(model, VQSegmentationModel):
        raise StageError(f"{folder.root}: a segmentation VQGAN; reconstructions here are of images and depth maps")
    return folder, model


def read_input(path: Path, channels: int, hw: tuple[int, int] | None, f: int):
    """The model's input (1, C, H, W) in [-1, 1] for one file: fitted to `hw`, or
    centre-cropped to a multiple of the downsampling factor `f`."""
    import torch
    from PIL import Image

    from tasks.data.datasets import normalise_depth
    from tasks.data.images import load_rgb
    from tasks.generation.conditions import fit, read_depth

    if channels == 3:
        try:
            array = load_rgb(path)
        except (OSError, Image.UnidentifiedImageError) as e:
            raise StageError(f"{path}: cannot read the image: {e}") from None
    else:
        array = normalise_depth(read_depth(path))
    if hw is None:
        h, w = array.shape[:2]
        if min(h, w) < f:
            raise StageError(f"{path}: {w}x{h} is smaller than the downsampling factor {f}")
        top, left = (h % f) // 2, (w % f) // 2
        array = array[top:top + h // f * f, left:left + w // f * f]
    else:
        array = fit(array, hw)
    x = torch.from_numpy(array.copy()).float()
    return x.permute(2, 0, 1)[None] / 127.5 - 1.0 if channels == 3 else x[None, None]


def run(args: argparse.Namespace) -> dict:
    import torch

    from tasks.data.files import write_json
    from tasks.data.images import to_rgb_arrays
    from tasks.evaluation.fidelity import codebook_usage, psnr_ssim
    from tasks.generation.conditions import parse_resolution
    from tasks.generation.output import save_png
    from tasks.runtime.devices import resolve_device
    from tasks.runtime.progress import progress

    files = input_files(args.images)
    device = resolve_device(args.device)
    folder, vq = load_vqgan(args.model, device)
    channels, f = vq.encoder.conv_in.in_channels, folder.downsampling
    if channels not in (1, 3):
        raise StageError(f"{folder.root}: takes {channels} channels; reconstructions are of RGB images and depth maps")
    try:
        hw = parse_resolution(args.resolution) if args.resolution else None
    except ValueError as e:
        raise StageError(f"--resolution: {e}") from None
    if hw is not None and (hw[0] % f or hw[1] % f):
        raise StageError(f"--resolution: both sides must be multiples of the downsampling factor {f}")
    out = Path(args.outdir) if args.outdir else None
    counts = torch.zeros(vq.quantize.re_embed, dtype=torch.long)
    per_image = []
    for path in progress(files, desc="reconstruct", unit="img"):
        x = read_input(path, channels, hw, f).to(device)
        with torch.inference_mode():
            quant, _, indices = vq.encode(x)
            rec = vq.decode(quant)
        psnr, ssim = psnr_ssim(rec.cpu().float(), x.cpu().float())
        counts += torch.bincount(indices.flatten().cpu(), minlength=counts.numel())
        target = out / f"{path.stem}.png" if out else path.with_name(f"{path.stem}{SUFFIX}.png")
        save_png(target, to_rgb_arrays(rec)[0])
        per_image.append({"input": str(path), "reconstruction": str(target), "width": x.shape[3],
                          "height": x.shape[2], "psnr": float(psnr[0]), "ssim": float(ssim[0])})
    report = {"model": str(args.model), "checkpoint_sha256": folder.sha256, "images": len(per_image),
              "psnr_mean": sum(r["psnr"] for r in per_image) / len(per_image),
              "ssim_mean": sum(r["ssim"] for r in per_image) / len(per_image),
              "codebook": codebook_usage(counts), "per_image": per_image}
    if out:
        write_json(out / "reconstructions.json", report)
    for r in per_image:
        print(f"{r['input']}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} -> {r['reconstruction']}")
    cb = report["codebook"]
    print(f"reconstruct: {len(per_image)} images, mean PSNR {report['psnr_mean']:.2f} dB, mean SSIM "
          f"{report['ssim_mean']:.4f}; codebook: {cb['codes_used']} of {cb['codebook_size']} codes used, "
          f"perplexity {cb['perplexity']:.1f}")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="VQGAN folder (or a transformer folder: its first stage), or s3:// URI")
    parser.add_argument("images", nargs="+", help="image files or folders of them (depth maps for a depth VQGAN)")
    parser.add_argument("-o", "--outdir", help="write <name>.png and reconstructions.json here "
                                               "(default: <name>_reconstruction.png beside each input)")
    parser.add_argument("--resolution", help="fit every image to SIDE or WIDTHxHEIGHT pixels first "
                                             "(default: its own size cropped to a multiple of the downsampling)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def main(args: argparse.Namespace) -> None:
    run(args)
