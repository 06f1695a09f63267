"""Train a scorer network: `python -m proxynas_fast.train_scorer --dataset cifar10 --data-dir D --out scorer.th`

For when no pretrained checkpoint exists. The paper's recipe by default (200 epochs); shorten it with
--epochs (the lr milestones scale along). Writes `{'state_dict', 'best_prec1', 'forgetting'}`, which
`python -m proxynas_fast.score --checkpoint` reads. Every epoch ends with `<out>.progress`; an interrupted
run continues with --resume.

The arguments and the output are checked before torch loads; the output is owned by this run while it runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxynas_fast import number_flags
from proxynas_fast.cli_errors import resume_command, run_cli
from proxynas_fast.data import DatasetError
from proxynas_fast.dependencies import refuse_missing
from proxynas_fast.output_owner import check_file_owner
from proxynas_fast.run_folder import check_output_file, hold_output
from proxynas_fast.scorer_weights import TRAINABLE_SCORER_DATASETS, scorer_weights_source

DATASETS = list(TRAINABLE_SCORER_DATASETS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.train_scorer", description=__doc__.split("\n\n")[0])
    # Checked in check_args (not argparse choices), so that --dataset imagenet is told what to pass instead.
    p.add_argument("--dataset", required=True, metavar="{" + ",".join(DATASETS) + "}",
                   help="data set to train on (required). ImageNet's scorer is not trained here: score imagenet "
                        "with torchvision's pretrained ResNet-50 (`python -m proxynas_fast.score --help`)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $PROXYNAS_DATA, else ./data)")
    p.add_argument("--out", required=True,
                   help="scorer checkpoint to write, e.g. scorer.th; progress goes to <out>.progress (required)")
    p.add_argument("--arch", default=None,
                   help="scorer network, resnet20/32/44/56/110 (default: the paper's, resnet20 or resnet56)")
    p.add_argument("--epochs", type=int, default=200, help="training epochs, >= 1 (default 200, the paper's)")
    p.add_argument("--lr", type=float, default=0.1, help="initial SGD learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, default=128, help="examples per step (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order (default 0)")
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N examples only, for demos (default: all)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: cuda if available)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>.progress when it exists (default: start over)")
    return p


def check_args(args: argparse.Namespace) -> Path:
    """Mistakes visible without torch or data; returns the checked output path."""
    if args.dataset not in DATASETS:
        if args.dataset == "imagenet":
            raise ValueError("--dataset imagenet: train_scorer trains the CIFAR/SVHN scorers; score imagenet with "
                             f"`python -m proxynas_fast.score --dataset imagenet --checkpoint FILE`: "
                             f"{scorer_weights_source('imagenet')}")
        raise ValueError(f"--dataset {args.dataset}: choose one of {', '.join(DATASETS)}")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs} (0 epochs would write an untrained scorer)")
    for flag, problem in (("--lr", number_flags.positive(args.lr)), ("--seed", number_flags.seed(args.seed)),
                          ("--batch-size", number_flags.at_most(args.batch_size, number_flags.MAX_BATCH_SIZE,
                                                                "examples"))):
        if problem:
            raise ValueError(f"{flag}: {problem}")
    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    out = check_output_file(args.out, flag="--out")
    check_file_owner(out, "train_scorer", flag="--out")
    check_output_file(f"{args.out}.progress", flag="--out")
    return out


def _interrupted(args, argv) -> str:
    progress = Path(f"{args.out}.progress")
    saved = (f"the last finished epoch is saved in {progress}" if progress.is_file()
             else "no epoch had finished, nothing saved")
    return f"{saved}; resume with: {resume_command('proxynas_fast.train_scorer', argv)}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if (status := refuse_missing("train_scorer")) is not None:
        return status

    def body() -> None:
        out = check_args(args)
        # torch loads here, after the checks: --help and ordinary mistakes answer without waiting for it.
        from .train_run import train_scorer_to_file

        with hold_output(args.out, what="train_scorer", kind="file"):
            train_scorer_to_file(args, out)

    return run_cli(body, user_errors=(DatasetError, FileNotFoundError, ValueError),
                   interrupted_message=lambda: _interrupted(args, argv))


if __name__ == "__main__":
    sys.exit(main())
