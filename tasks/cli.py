"""The ``taming`` command: one sub-command per pipeline stage, plus ``sample-model``, ``reconstruct``,
``weights``, ``publish``, ``share`` and ``exp``.

``dvc.yaml`` calls these; Prefect reproduces them through DVC. For a pipeline stage the
command validates the whole params file once (tasks/config/params.py: a bad value
anywhere stops the first stage, before work) and calls the stage's
``main(config, args)`` with the typed config; the stage parses nothing itself. A
stage module is imported only when its command runs, so ``taming --help`` stays
instant and a broken optional dependency breaks only its own stage.

Each stage module provides:
    add_arguments(parser)        -- its own flags (``--params`` / ``-S`` are common)
    main(config, args)           -- pipeline stages: config is the validated PipelineConfig
    main(args)                   -- the other commands

Errors a user can act on (bad parameters: exit 2; missing or unusable inputs, model
files: exit 1) are printed in one line naming the stage; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from tasks.config.typed import ConfigError

# name -> (module, one-line help). Order is pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "acquire": ("tasks.acquire", "get ILSVRC2012-style archives: generate the demo set, or check ImageNet / custom lists"),
    "extract": ("tasks.extract", "safely extract the archives into data/dataset/image/{train,validation}/<synset>/"),
    "annotate": ("tasks.annotate", "per-image maps: MiDaS depth (RGBA-packed float32) or DeepLab v2 COCO-Stuff labels"),
    "source-maps": ("tasks.source_maps", "the label maps a data source ships (COCO-Stuff, ADE20k), as the models read them"),
    "train-vqgan": ("tasks.train_vqgan", "train a VQGAN first stage (image, depth or segmentation) with Lightning"),
    "tokenize": ("tasks.tokenize_images", "encode images and conditioning once with the frozen VQGANs into Parquet shards"),
    "train-transformer": ("tasks.train_transformer", "train the conditional transformer from Parquet tokens"),
    "sample": ("tasks.sample", "sample images with the KV cache (top_k / top_p / temperature) and write a grid"),
    "fid-reference": ("tasks.fid_reference", "Inception features of the FID reference images, computed once"),
    "evaluate": ("tasks.evaluate", "FID/KID of the samples against the reference into metrics/samples.json"),
    "evaluate-vqgan": ("tasks.evaluate_vqgan", "the first stages' reconstructions (PSNR, SSIM, rFID) and codebook usage"),
    "sample-model": ("tasks.sample_model", "sample any transformer folder (ours, official, s3://) without a dataset"),
    "reconstruct": ("tasks.reconstruct", "run images through a VQGAN folder: reconstructions, PSNR/SSIM, codebook usage"),
    "weights": ("tasks.weights", "list, fetch, import or push pretrained weight files"),
    "publish": ("tasks.publish", "upload a trained checkpoint with its manifest to S3"),
    "share": ("tasks.share", "push / pull the DVC remote: dvc.lock's outputs, the run-cache and its outputs"),
    "exp": ("tasks.exp", "dvc exp run -S with the whole params.yaml checked first and its layout kept"),
}

# The stages of dvc.yaml: they read params.yaml, validated as a whole first.
PIPELINE_STAGES = ("acquire", "extract", "annotate", "source-maps", "train-vqgan", "tokenize", "train-transformer",
                   "sample", "fid-reference", "evaluate", "evaluate-vqgan")


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, STAGES))
    lines = "\n".join(f"  {n:<{width}}  {h}" for n, (_, h) in STAGES.items())
    return argparse.ArgumentParser(
        prog="taming",
        description="Taming Transformers as a reproducible pipeline. Stages:\n" + lines
        + "\n\nRun 'taming <stage> --help' for a stage's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="taming <stage> [options]",
    )


def stage_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_line = STAGES[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"taming {name}", description=help_line)
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -S sample.batch_size=4 (repeatable)")
    module.add_arguments(parser)
    parser.set_defaults(command=name)
    return parser, module


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story: inputs, model files, weights."""
    from models.errors import ModelFileError
    from tasks.runtime.errors import StageError
    return StageError, ModelFileError, FileNotFoundError


def end_with_dvc() -> None:
    """Under ``dvc repro`` (DVC sets DVC_STAGE), die with the dvc process that started us.

    ``kill -9`` of dvc alone used to leave the stage running, orphaned, writing into outputs
    the next ``dvc repro`` deletes, and finishing a run whose result nobody records. Linux
    only; it covers shells that exec the command (bash, zsh: dvc runs ``$SHELL -c cmd``).
    Behind a shell that stays (dash) the orphan lives on, holding its output's lock, and
    the next run is refused naming it (tasks/runtime/locks.py)."""
    if "DVC_STAGE" in os.environ and sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        _top_parser().print_usage(sys.stderr)
        print(f"taming: unknown stage {name!r}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    end_with_dvc()
    parser, module = stage_parser(name)
    args = parser.parse_args(rest)
    try:
        if name in PIPELINE_STAGES:
            from tasks.config.params import validate
            return int(module.main(validate(args.params, args.overrides), args) or 0)
        return int(module.main(args) or 0)
    except ConfigError as e:
        print(f"taming {name}: invalid parameters: {e}", file=sys.stderr)
        return 2
    except user_errors() as e:
        print(f"taming {name}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
