"""The scoring run behind `python -m proxynas_fast.score`: load the scorer, score the split (sharded over the
ranks of a torchrun job), and write the entropy file, the features and the JSON summary on rank 0."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..data import dataset_info, load_dataset
from ..entropy_file import write_entropy_file
from ..distributed import RanksLost, process_group
from .entropy import score_dataset
from .models import load_scorer


def score_to_files(args: argparse.Namespace) -> None:
    """Score as `args` (the CLI's, already checked) asks. An error leaves the process group at once; a success
    waits for every rank."""
    try:
        with process_group(args.device, timeout_s=getattr(args, "dist_timeout", None)) as ctx:
            info = dataset_info(args.dataset)
            result = _score(args, info, ctx.device)
            if ctx.is_main:
                _write_outputs(args, info, result)
    except RanksLost as e:  # one line (the CLI's ValueError); nothing is written before every rank is done
        raise ValueError(f"{e}; nothing was written ({args.out} is written whole at the end): run the same "
                         "command again") from None


def _score(args: argparse.Namespace, info, device):
    # The checkpoint first: a wrong one is reported in a second, before the data set is decoded.
    model = load_scorer(args.arch or info.scorer_arch, args.checkpoint, info.num_classes)
    dataset = load_dataset(args.dataset, args.data_dir, args.split)
    if args.limit is not None:
        dataset = dataset.subset(range(min(args.limit, len(dataset))))
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
