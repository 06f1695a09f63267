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
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..atomic import atomic_torch_save
from ..rng import capture_rng_state, restore_rng_state
from ..selection.forgetting import ForgettingTracker
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
    if not recipe.lr > 0:
        raise ValueError(f"lr must be > 0, got {recipe.lr}")
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
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for damaged files
        raise ValueError(f"{path}: not a readable progress checkpoint ({type(e).__name__}: {str(e)[:120]}); "
                         "delete it to start over") from None
    missing = [k for k in PROGRESS_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        raise ValueError(f"{path}: not a scorer progress checkpoint (missing {missing[:4]}); delete it to start over")
    if ck["recipe"] != asdict(recipe):
        raise ValueError(f"{path}: saved with a different recipe {ck['recipe']}")
    return ck


def train_scorer(dataset, out_path, recipe: ScorerRecipe, *, mean, std, device="cpu", resume: bool = False,
                 eval_dataset=None, log=print, stop_after_epoch: Optional[int] = None) -> nn.Module:
    """Train `recipe.arch` on an ArrayDataset and write `{'state_dict', 'best_prec1', 'forgetting'}` to out_path.

    The checkpoint of the run in progress lives beside it as `<out_path>.progress`. `stop_after_epoch`
    ends this call early (time-sliced jobs); a later call with resume=True carries on.
    """
    from ..loaders import ResidentLoader

    check_recipe(recipe)
    device = torch.device(device)
    out_path = Path(out_path)
    progress_path = progress_path_for(out_path)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    random.seed(recipe.seed)
    model = create_scorer(recipe.arch, dataset.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    milestones = sorted({max(1, int(round(m * recipe.epochs))) for m in recipe.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    loader = ResidentLoader(dataset.images, dataset.labels, recipe.batch_size, device=device, train=True,
                            mean=mean, std=std, seed=recipe.seed)
    tracker = ForgettingTracker(len(dataset))
    start, best = 0, 0.0
    if resume and progress_path.exists():
        ck = load_progress(progress_path, recipe, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        tracker.load_state_dict(ck["forgetting"])
        restore_rng_state(ck["rng"])
        start, best = ck["epoch"], ck["best_prec1"]
        log(f"resumed {progress_path} at epoch {start}")
    criterion = nn.CrossEntropyLoss()
    for epoch in range(start, recipe.epochs):
        model.train()
        loader.set_epoch(epoch)
        order = loader.epoch_plan().example_index
        seen = correct = 0
        for step, (x, y) in enumerate(loader):
            logits = model(x)
            loss = criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hit = (logits.argmax(1) == y).cpu()
            tracker.update(order[step * recipe.batch_size: step * recipe.batch_size + len(y)].numpy(), hit.numpy())
            seen += len(y)
            correct += int(hit.sum())
        sched.step()
        acc = 100.0 * correct / max(seen, 1)
        if eval_dataset is not None:
            acc = 100.0 * evaluate(model, eval_dataset, mean=mean, std=std, device=device)
        best = max(best, acc)
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                           "forgetting": tracker.state_dict(), "rng": capture_rng_state(), "epoch": epoch + 1,
                           "best_prec1": best, "recipe": asdict(recipe)}, progress_path)
        log(f"epoch {epoch + 1}/{recipe.epochs}: {'test' if eval_dataset is not None else 'train'} acc {acc:.2f}%")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < recipe.epochs:
            return model
    atomic_torch_save({"state_dict": model.state_dict(), "best_prec1": best, "arch": recipe.arch,
                       "forgetting": tracker.counts()}, out_path)
    return model


@torch.no_grad()
def evaluate(model: nn.Module, dataset, *, mean, std, device="cpu", batch_size: int = 500) -> float:
    """Top-1 accuracy of `model` on an ArrayDataset (no augmentation)."""
    from .entropy import _batches_from_arrays

    model.eval()
    correct = 0
    labels = torch.as_tensor(dataset.labels)
    for i, x in enumerate(_batches_from_arrays(dataset.images, mean, std, batch_size, torch.device(device), 0,
                                               len(dataset))):
        y = labels[i * batch_size: i * batch_size + len(x)].to(device)
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)
