"""The run behind `python -m proxynas_fast.train_scorer`: a resumed run's progress file is checked before the
data set loads, then the scorer trains on the training split and is evaluated on the test split."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data import dataset_info, load_dataset
from .models import list_scorers
from .scorer_training import ScorerRecipe, check_recipe, load_progress, progress_path_for, train_scorer


def train_scorer_to_file(args: argparse.Namespace, out: Path) -> None:
    info = dataset_info(args.dataset)
    recipe = ScorerRecipe(arch=args.arch or info.scorer_arch, epochs=args.epochs, lr=args.lr,
                          batch_size=args.batch_size, seed=args.seed)
    check_recipe(recipe)
    if recipe.arch not in list_scorers():
        raise ValueError(f"--arch {recipe.arch}: unknown scorer network; choose one of {', '.join(list_scorers())}")
    progress = progress_path_for(out)
    if args.resume and progress.exists():
        load_progress(progress, recipe)  # a damaged or foreign file is reported now, not after loading the data
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    train = load_dataset(args.dataset, args.data_dir, "train")
    test = load_dataset(args.dataset, args.data_dir, "test")
    if args.limit:
        train = train.subset(range(min(args.limit, len(train))))
    train_scorer(train, out, recipe, mean=info.scorer_mean, std=info.scorer_std, device=device,
                 resume=args.resume, eval_dataset=test, log=_log_line)


def _log_line(message: str) -> None:
    """One progress line per epoch, flushed at once so a redirected run shows it too."""
    print(message, flush=True)
