"""Train a scorer network: `python -m proxynas_fast.train_scorer --dataset cifar10 --data-dir D --out scorer.th`

For when no pretrained checkpoint exists. The paper's recipe by default (200 epochs); shorten it with
--epochs (the lr milestones scale along). Writes `{'state_dict', 'best_prec1', 'forgetting'}`, which
`python -m proxynas_fast.score --checkpoint` reads. Interrupted runs continue with --resume.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .data import DatasetError, dataset_info, load_dataset
from .scoring.models import list_scorers
from .scoring.train import ScorerRecipe, train_scorer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.train_scorer", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=["cifar10", "cifar100", "svhn"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default=None, choices=list_scorers())
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples only (demos)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    try:
        info = dataset_info(args.dataset)
        train = load_dataset(args.dataset, args.data_dir, "train")
        test = load_dataset(args.dataset, args.data_dir, "test")
        if args.limit:
            train = train.subset(range(min(args.limit, len(train))))
        recipe = ScorerRecipe(arch=args.arch or info.scorer_arch, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed)
        train_scorer(train, args.out, recipe, mean=info.scorer_mean, std=info.scorer_std, device=args.device,
                     resume=args.resume, eval_dataset=test)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
