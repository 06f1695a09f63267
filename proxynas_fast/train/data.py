"""Loaders for training from scratch: the data set (optionally a subset) wrapped in the project loaders."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from proxynas_fast.data import load_dataset, materialize
from proxynas_fast.train.config import TrainConfig

# Test subsets are drawn with a fixed seed so runs with different --seed are scored on the same images.
TEST_SUBSET_SEED = 0


def select_indices(n: int, limit: Optional[int] = None, portion: Optional[float] = None,
                   mode: str = "random", seed: int = 0) -> np.ndarray:
    """Sorted indices of the examples to use out of `n`.

    portion keeps floor(portion * n) (at least 1), limit caps the count; "first" takes the leading
    examples, "random" a seeded random subset (the test split of image-folder layouts is sorted by
    class, so its first examples would all be one class).
    """
    count = n
    if portion is not None:
        count = max(1, int(portion * n))
    if limit is not None:
        count = min(count, limit)
    if count == n:
        return np.arange(n)
    if mode == "first":
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


def _subset(ds, idx: np.ndarray):
    """The examples `idx` of `ds`; of a lazily loaded image folder only those are decoded."""
    return materialize(ds) if len(idx) == len(ds) else ds.subset(idx)


def build_loaders(cfg: TrainConfig, device: torch.device) -> Tuple[Any, Any, Dict[str, Any]]:
    """(train_loader, test_loader, info) for cfg.dataset; info has num_classes and the example counts."""
    from proxynas_fast import loaders

    train_ds = load_dataset(cfg.dataset, cfg.data_dir, "train", lazy=True)
    test_ds = load_dataset(cfg.dataset, cfg.data_dir, "test", lazy=True)
    train_ds = _subset(train_ds, select_indices(len(train_ds), cfg.train_limit, cfg.train_portion,
                                                cfg.subset, cfg.seed))
    test_ds = _subset(test_ds, select_indices(len(test_ds), cfg.test_limit, None, cfg.subset, TEST_SUBSET_SEED))
    # A last training batch of one example would break BatchNorm on the auxiliary head's 1x1 map.
    drop_last = len(train_ds) % cfg.batch_size == 1
    if cfg.dataset == "imagenet":
        train_loader = loaders.build_imagenet_loader(
            train_ds.files, train_ds.labels, cfg.batch_size, train=True, device=device,
            backend=cfg.loader_backend, seed=cfg.seed, skip_bad_images=cfg.skip_bad_images, drop_last=drop_last)
        test_loader = loaders.build_imagenet_loader(
            test_ds.files, test_ds.labels, cfg.batch_size, train=False, device=device,
            backend=cfg.loader_backend, seed=cfg.seed, skip_bad_images=cfg.skip_bad_images)
    else:
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        common = dict(device=device, mean=train_ds.mean, std=train_ds.std, seed=cfg.seed, rank=0, world_size=1,
                      memory_format=memory_format)
        train_loader = loaders.ResidentLoader(
            train_ds.images, train_ds.labels, cfg.batch_size, train=True, pad=4, flip=True, cutout=cfg.cutout,
            shuffle=True, drop_last=drop_last, **common)
        test_loader = loaders.ResidentLoader(
            test_ds.images, test_ds.labels, cfg.batch_size, train=False, pad=0, flip=False, cutout=0,
            shuffle=False, drop_last=False, **common)
    # The ImageNet loaders may have dropped unreadable files (--skip-bad-images): count what they read.
    info = {"num_classes": train_ds.num_classes,
            "train_examples": len(getattr(train_loader, "files", train_ds)),
            "test_examples": len(getattr(test_loader, "files", test_ds))}
    return train_loader, test_loader, info
