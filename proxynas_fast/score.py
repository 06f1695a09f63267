"""Score a data set: `python -m proxynas_fast.score --dataset cifar10 --data-dir D --checkpoint F --out entropy.txt`

Writes the paper's format, `index<TAB>entropy<TAB>label`: entropy in nats of the scorer's softmax, original
example order, no augmentation, evaluation mode. Runs under torchrun too (gloo on CPU, nccl on GPU): each
rank scores a shard and rank 0 writes the gathered result.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from .atomic import atomic_write
from .data import DATASETS, DatasetError, dataset_info, load_dataset
from .entropy_file import write_entropy_file
from .scoring import CheckpointError, list_scorers, load_scorer, score_dataset


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


def _device(arg: str) -> torch.device:
    if arg == "auto":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
    return torch.device(arg)


def _init_distributed(device: torch.device) -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    device = _device(args.device)
    distributed = _init_distributed(device)
    rank = dist.get_rank() if distributed else 0
    try:
        info = dataset_info(args.dataset)
        dataset = load_dataset(args.dataset, args.data_dir, args.split)
        if args.limit is not None:
            if args.limit < 1:
                raise ValueError(f"--limit must be >= 1, got {args.limit}")
            dataset = dataset.subset(range(min(args.limit, len(dataset))))
        model = load_scorer(args.arch or info.scorer_arch, args.checkpoint, info.num_classes)
        result = score_dataset(model, dataset, mean=info.scorer_mean, std=info.scorer_std,
                               batch_size=args.batch_size, device=device, bin_width=info.bin_width,
                               with_features=args.features_out is not None,
                               progress=not args.no_progress and sys.stderr.isatty(), image_size=args.image_size)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
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
        from .atomic import atomic_write_text

        atomic_write_text(args.summary_out or f"{args.out}.json", json.dumps(summary, indent=1) + "\n")
        print(f"scored {len(result.entropy)} examples of {args.dataset}/{args.split}: top-1 {100 * result.top1:.2f}%, "
              f"mean entropy {summary['mean_entropy']:.4f} nats -> {args.out}")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
