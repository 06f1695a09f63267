"""Score a data set: `python -m proxynas_fast.score --dataset cifar10 --data-dir D --checkpoint F --out entropy.txt`

Writes the paper's format, `index<TAB>entropy<TAB>label`: entropy in nats of the scorer's softmax, original
example order, no augmentation, evaluation mode. Runs under torchrun too (gloo on CPU, nccl on GPU): each
rank scores a shard and rank 0 writes the gathered result.

The arguments and the outputs are checked before torch loads (so --help and mistakes answer at once); the
output file is owned by this run while it runs (a second run on the same --out is refused).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path

from proxynas_fast.cli_errors import resume_command, run_cli
from proxynas_fast.data import DATASETS, DatasetError
from proxynas_fast.dependencies import refuse_missing
from proxynas_fast.output_owner import check_file_owner
from proxynas_fast.run_folder import check_output_file, hold_output, same_file
from proxynas_fast.scorer_weights import scorer_weights_source, torchvision_resnet50_source

SCORER_NAMES = "resnet20/32/44/56/110 (CIFAR, SVHN), resnet18/50 (ImageNet)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="data set to score (required)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $PROXYNAS_DATA, else ./data)")
    # --checkpoint and --out are checked in check_args, so that a missing one is answered with what to pass.
    p.add_argument("--checkpoint",
                   help="scorer weights file (required): {'state_dict': ...} or a bare state_dict, read as tensors "
                        f"only. imagenet: {torchvision_resnet50_source()}; cifar10/cifar100/svhn: one written "
                        "by `python -m proxynas_fast.train_scorer`")
    p.add_argument("--arch", default=None,
                   help=f"scorer network: {SCORER_NAMES} (default: the paper's for the data set)")
    p.add_argument("--out", help="entropy file to write (index<TAB>entropy<TAB>label) (required)")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="which split to score (default train, the one a proxy is drawn from)")
    p.add_argument("--batch-size", type=int, default=500,
                   help="examples per forward pass; larger is faster until memory runs out (default 500)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: cuda if available)")
    p.add_argument("--features-out", default=None, help="also save penultimate features (.npy) for k-center "
                                                         "(default: not saved)")
    p.add_argument("--summary-out", default=None, help="JSON summary (top-1, histogram) (default: <out>.json)")
    p.add_argument("--image-size", type=int, default=224, help="ImageNet crop size (default 224)")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N examples, for quick checks (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")
    p.add_argument("--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before giving up, so a frozen rank "
                        "cannot hang the job (default 1800)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every mistake that can be seen without torch or data, as a one-line ValueError/OutputError."""
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise ValueError(f"--dist-timeout must be a number of seconds > 0, got {args.dist_timeout}")
    for flag, value in (("--batch-size", args.batch_size), ("--image-size", args.image_size),
                        ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.checkpoint is None:
        raise ValueError(f"--checkpoint is required: {scorer_weights_source(args.dataset)}")
    if args.out is None:
        raise ValueError("--out is required: the entropy file to write")
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint}: is a folder; name the scorer's weights file (.th/.pt)")
    if not checkpoint.is_file():
        hint = f"; {scorer_weights_source(args.dataset)}" if args.dataset == "imagenet" else ""
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: checkpoint does not exist{hint}")
    outputs = [("--out", args.out), ("--summary-out", args.summary_out or f"{args.out}.json")]
    if args.features_out:
        outputs.append(("--features-out", args.features_out))
    kinds = {"--out": "score", "--summary-out": "json", "--features-out": "npy"}
    for flag, path in outputs:
        check_output_file(path, flag=flag)
        # Written over at the end: naming the checkpoint would destroy the scorer's weights.
        if same_file(path, args.checkpoint):
            raise ValueError(f"{flag} {path}: is the --checkpoint file; name another output file")
        check_file_owner(path, "score", flag=flag, kind=kinds[flag])
    for i, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[i + 1:]:
            if os.path.realpath(path) == os.path.realpath(other):
                raise ValueError(f"{other_flag} {other}: is also the {flag} file; name another output file")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if (status := refuse_missing("score")) is not None:
        return status

    def body() -> None:
        check_args(args)
        # torch loads here, after the checks: --help and ordinary mistakes answer without waiting for it.
        from .score_run import score_to_files

        # Under torchrun only rank 0 writes, so only rank 0 owns the output.
        owner = hold_output(args.out, what="score", kind="file") if _is_main_rank() else contextlib.nullcontext()
        with owner:
            score_to_files(args)

    return run_cli(body, user_errors=(DatasetError, FileNotFoundError, ValueError),
                   interrupted_message=lambda: (f"nothing written ({args.out} is written whole at the end); "
                                                f"resume with: {resume_command('proxynas_fast.score', argv, add=())}"))


if __name__ == "__main__":
    sys.exit(main())
