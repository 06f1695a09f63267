"""Training a scorer network when no pretrained checkpoint exists (the paper's recipe by default).

CIFAR ResNet recipe: SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs, lr x0.1 at
epochs 100 and 150 (milestones scale with --epochs for shorter schedules). Random crop + flip.
Forgetting events (Toneva et al. 2019) are recorded on the fly for the `forgetting` selector.
Every epoch ends with an atomic checkpoint, so `resume=True` continues an interrupted run.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
import torch.nn as nn

from .. import number_flags
from ..atomic import atomic_torch_save
from ..divergence import describe_kept, floating_state, stop_if_diverged
from ..loaders import ResidentLoader
from ..rng import capture_rng_state, restore_rng_state
from ..safe_load import UnsafeFileError, load_plain
from ..selection.forgetting import ForgettingTracker
from .entropy import _batches_from_arrays
from .models import create_scorer


@dataclass
class ScorerRecipe:
    arch: str = "resnet20"
    epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of `epochs`
    seed: int = 0


PROGRESS_KEYS = ("model", "optimizer", "scheduler", "forgetting", "rng", "epoch", "best_prec1", "recipe")


def check_recipe(recipe: ScorerRecipe) -> None:
    """ValueError for a recipe that would not train (no epochs, no step size, empty batches)."""
    if recipe.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {recipe.epochs} (0 epochs would write an untrained scorer)")
    for name, check in (("lr", number_flags.positive), ("momentum", number_flags.unit_interval),
                        ("weight_decay", number_flags.non_negative), ("seed", number_flags.seed)):
        problem = check(getattr(recipe, name))
        if problem:
            raise ValueError(f"{name}: {problem}")
    if recipe.batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {recipe.batch_size}")


def progress_path_for(out_path) -> Path:
    """Where the run in progress keeps its checkpoint: `<out_path>.progress`."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".progress")


def load_progress(path, recipe: ScorerRecipe, map_location="cpu") -> dict:
    """The progress checkpoint at `path`, checked to be complete and of `recipe`; ValueError naming the file
    otherwise (a truncated or foreign file, or one saved with another recipe)."""
    try:
        ck = load_plain(path, map_location=map_location)
    except UnsafeFileError as e:
        raise ValueError(f"--resume: {e}; delete it to start over") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for damaged files
        raise ValueError(f"{path}: not a readable progress checkpoint ({type(e).__name__}: {str(e)[:120]}); "
                         "delete it to start over") from None
    missing = [k for k in PROGRESS_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ValueError(f"{path}: not a scorer progress checkpoint (missing {missing[:4]}); delete it to start over")
    if ck["recipe"] != asdict(recipe):
        raise ValueError(f"{path}: saved with a different recipe {ck['recipe']}")
    return ck


@dataclass
class _ScorerRun:
    """What one scorer training run carries from epoch to epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    tracker: ForgettingTracker
    start_epoch: int = 0
    best: float = 0.0

    def progress_state(self, epoch_done: int, recipe: ScorerRecipe) -> dict:
        """The `<out>.progress` checkpoint after `epoch_done` epochs (keys: PROGRESS_KEYS)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "forgetting": self.tracker.state_dict(),
                "rng": capture_rng_state(), "epoch": epoch_done, "best_prec1": self.best, "recipe": asdict(recipe)}

    def restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.tracker.load_state_dict(ck["forgetting"])
        restore_rng_state(ck["rng"])
        self.start_epoch, self.best = ck["epoch"], ck["best_prec1"]


def seed_scorer_run(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build_scorer_run(dataset, recipe: ScorerRecipe, *, mean, std, device: torch.device) -> _ScorerRun:
    """The seeded scorer, its SGD optimizer, the step schedule (milestones as fractions of the epochs), the
    augmented resident loader and the forgetting tracker."""
    seed_scorer_run(recipe.seed)
    model = create_scorer(recipe.arch, dataset.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    milestones = sorted({max(1, int(round(m * recipe.epochs))) for m in recipe.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    loader = ResidentLoader(dataset.images, dataset.labels, recipe.batch_size, device=device, train=True,
                            mean=mean, std=std, seed=recipe.seed)
    return _ScorerRun(model, opt, sched, loader, ForgettingTracker(len(dataset)))


def train_scorer_epoch(run: _ScorerRun, epoch: int, criterion: nn.Module, batch_size: int) -> float:
    """One epoch of SGD; records forgetting events; returns the training accuracy in percent."""
    run.model.train()
    run.loader.set_epoch(epoch)
    order = run.loader.epoch_plan().example_index
    seen = correct = 0
    for step, (x, y) in enumerate(run.loader):
        logits = run.model(x)
        loss = criterion(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        hit = (logits.argmax(1) == y).cpu()
        run.tracker.update(order[step * batch_size: step * batch_size + len(y)].numpy(), hit.numpy())
        seen += len(y)
        correct += int(hit.sum())
    run.scheduler.step()
    return 100.0 * correct / max(seen, 1)


def train_scorer(dataset, out_path, recipe: ScorerRecipe, *, mean, std, device="cpu", resume: bool = False,
                 eval_dataset=None, log=print, stop_after_epoch: Optional[int] = None) -> nn.Module:
    """Train `recipe.arch` on an ArrayDataset and write `{'state_dict', 'best_prec1', 'forgetting'}` to out_path.

    The checkpoint of the run in progress lives beside it as `<out_path>.progress`. `stop_after_epoch`
    ends this call early (time-sliced jobs); a later call with resume=True carries on.
    """
    check_recipe(recipe)
    device = torch.device(device)
    out_path = Path(out_path)
    progress_path = progress_path_for(out_path)
    run = build_scorer_run(dataset, recipe, mean=mean, std=std, device=device)
    if resume and progress_path.exists():
        run.restore(load_progress(progress_path, recipe, map_location=device))
        log(f"resumed {progress_path} at epoch {run.start_epoch}")
    criterion = nn.CrossEntropyLoss()
    for epoch in range(run.start_epoch, recipe.epochs):
        acc = train_scorer_epoch(run, epoch, criterion, recipe.batch_size)
        # Before the progress file is replaced: a NaN network must not become the one to resume from (or the scorer).
        stop_if_diverged(f"epoch {epoch + 1}/{recipe.epochs}", {"weights": floating_state(run.model)},
                         f"try a lower --lr (now {recipe.lr:g})",
                         describe_kept(progress_path if progress_path.is_file() else None, epoch or None))
        if eval_dataset is not None:
            acc = 100.0 * evaluate(run.model, eval_dataset, mean=mean, std=std, device=device)
        run.best = max(run.best, acc)
        atomic_torch_save(run.progress_state(epoch + 1, recipe), progress_path)
        log(f"epoch {epoch + 1}/{recipe.epochs}: {'test' if eval_dataset is not None else 'train'} acc {acc:.2f}%")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < recipe.epochs:
            return run.model
    atomic_torch_save({"state_dict": run.model.state_dict(), "best_prec1": run.best, "arch": recipe.arch,
                       "forgetting": torch.from_numpy(run.tracker.counts())}, out_path)
    return run.model


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, mean, std, device="cpu", batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on an ArrayDataset (no augmentation)."""
    model.eval()
    correct = 0
    labels = torch.as_tensor(dataset.labels)
    for i, x in enumerate(_batches_from_arrays(dataset.images, mean, std, batch_size, torch.device(device), 0,
                                               len(dataset))):
        y = labels[i * batch_size: i * batch_size + len(x)].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)
