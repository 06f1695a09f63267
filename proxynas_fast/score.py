"""Score a data set: `python -m proxynas_fast.score --dataset cifar10 --data-dir D --checkpoint F --out entropy.txt`

Writes the paper's format, `index<TAB>entropy<TAB>label`: entropy in nats of the scorer's softmax, original
example order, no augmentation, evaluation mode. Runs under torchrun too (gloo on CPU, nccl on GPU): each
rank scores a shard and rank 0 writes the gathered result.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .atomic import atomic_write, atomic_write_text
from .data import DATASETS, DatasetError, dataset_info, load_dataset
from .entropy_file import write_entropy_file
from .scoring import CheckpointError, list_scorers, load_scorer, score_dataset
from .search.distributed import process_group


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--data-dir", default=None, help="data folder (default: $PROXYNAS_DATA, else ./data)")
    p.add_argument("--checkpoint", required=True, help="scorer weights (.th/.pt: {'state_dict': ...} or a state_dict)")
    p.add_argument("--arch", default=None, choices=list_scorers(),
                   help="scorer network (default: the paper's for the data set)")
    p.add_argument("--out", required=True, help="entropy file to write (index<TAB>entropy<TAB>label)")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--features-out", default=None, help="also save penultimate features (.npy) for k-center")
    p.add_argument("--summary-out", default=None, help="JSON summary (top-1, histogram); default: <out>.json")
    p.add_argument("--image-size", type=int, default=224, help="ImageNet crop size")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples (quick checks)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # An error leaves the process group at once; a success waits for every rank.
        with process_group(args.device) as ctx:
            info = dataset_info(args.dataset)
            result = _score(args, info, ctx.device)
            if ctx.is_main:
                _write_outputs(args, info, result)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _score(args: argparse.Namespace, info, device):
    dataset = load_dataset(args.dataset, args.data_dir, args.split)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        dataset = dataset.subset(range(min(args.limit, len(dataset))))
    model = load_scorer(args.arch or info.scorer_arch, args.checkpoint, info.num_classes)
    return score_dataset(model, dataset, mean=info.scorer_mean, std=info.scorer_std,
                         batch_size=args.batch_size, device=device, bin_width=info.bin_width,
                         with_features=args.features_out is not None,
                         progress=not args.no_progress and sys.stderr.isatty(), image_size=args.image_size)


def _write_outputs(args: argparse.Namespace, info, result) -> None:
    """Rank 0: the entropy file, the features (if asked for) and the JSON summary."""
    write_entropy_file(args.out, np.arange(len(result.entropy)), result.entropy, result.labels)
    if args.features_out:
        atomic_write(args.features_out, lambda tmp: np.save(tmp, result.features))
    nz = result.bin_counts.nonzero()[0]
    summary = {
        "dataset": args.dataset, "split": args.split, "checkpoint": str(args.checkpoint),
        "examples": int(len(result.entropy)), "top1": result.top1,
        "mean_entropy": float(result.entropy.mean()), "zero_entropy": int((result.entropy == 0).sum()),
        "log10_bin_width": info.bin_width,
        "histogram": {f"[{result.bin_edges[i]:.2f},{result.bin_edges[i + 1]:.2f})": int(result.bin_counts[i])
                      for i in range(nz.min(), nz.max() + 1)} if len(nz) else {},
    }
    atomic_write_text(args.summary_out or f"{args.out}.json", json.dumps(summary, indent=1) + "\n")
    print(f"scored {len(result.entropy)} examples of {args.dataset}/{args.split}: top-1 {100 * result.top1:.2f}%, "
          f"mean entropy {summary['mean_entropy']:.4f} nats -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
