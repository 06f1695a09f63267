"""The search's data: the training set (decoded whole, or only the proxy's images) and the proxy's loaders.

`build_loaders` gives the two training halves' augmented, shuffled loaders ("weights", "arch") and the
architecture half's plain one ("eval"); CIFAR-style sets are served from memory (`ResidentLoader`), ImageNet
through `loaders.imagenet` (image store, PIL or DALI).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch

from proxynas_fast.data import load_dataset, materialize
from proxynas_fast.loaders import ResidentLoader, build_imagenet_loader, select_files
from proxynas_fast.loaders.sharding import derived_seed
from proxynas_fast.selection import get_selector
from proxynas_fast.threads import current_load, threads_for_load, usable_cores

from .config import SearchConfig
from .errors import SearchError
from .proxy_prep import ProxySplit


def needs_all_images(config: SearchConfig) -> bool:
    """Whether the run reads the pixels of every training example: to score them (--scorer-checkpoint without
    --entropy-file or --proxy), or for a selector with per-example options (kcenter: features of a scorer pass).
    Otherwise a JPEG folder loads lazily and only the proxy's images are decoded (`proxy_examples`)."""
    if config.proxy:
        return False
    if config.scorer_checkpoint and not config.entropy_file:
        return True
    return bool(config.selection) and bool(get_selector(config.selection).per_example_options)


def load_train_set(config: SearchConfig):
    """The training set: decoded whole when `needs_all_images`, else (an image folder) decoded on demand."""
    data_dir = config.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SearchError(f"--data-dir {data_dir} does not exist (or is not a folder)")
    return load_dataset(config.dataset, data_dir, "train", download=config.download,
                        lazy=not needs_all_images(config))


def proxy_examples(dataset, split: ProxySplit) -> Tuple[Any, ProxySplit]:
    """(the examples of both halves, in index order; the split re-indexed into them). Of a lazily loaded image
    folder only these are decoded (a corrupt file elsewhere is never read); the halves keep their examples and
    their order, so the loaders draw the same batches as over the whole set."""
    needed = np.union1d(split.weights, split.arch)
    if np.array_equal(needed, np.arange(len(dataset))):
        return materialize(dataset), split
    local = ProxySplit(np.arange(len(needed)), np.searchsorted(needed, split.weights),
                       np.searchsorted(needed, split.arch), split.entropy_source)
    return dataset.subset(needed), local


def build_loaders(config: SearchConfig, dataset, split: ProxySplit, *, rank: int, world_size: int,
                  device: torch.device) -> Dict[str, Any]:
    """{"weights", "arch"}: augmented, shuffled training batches of each half (incomplete batches dropped);
    {"eval"}: the architecture half without augmentation, for the per-epoch validation. The loaders receive only
    the proxy's examples (`proxy_examples`)."""
    dataset, split = proxy_examples(dataset, split)
    common = dict(device=device, rank=rank, world_size=world_size)
    seeds = {"weights": derived_seed(config.seed, 1), "arch": derived_seed(config.seed, 2), "eval": 0}
    parts = {"weights": split.weights, "arch": split.arch, "eval": split.arch}
    loaders = {}
    if config.dataset == "imagenet":
        threads = config.loader_threads or free_cores()
        for key, part in parts.items():
            files, labels = select_files(dataset.files, dataset.labels, part)
            train = key != "eval"
            loaders[key] = build_imagenet_loader(
                files, labels, config.batch_size, train=train, backend=config.loader_backend,
                seed=seeds[key], image_size=config.image_size or 224, drop_last=train, num_threads=threads,
                store_size=config.store_size, **common)
    else:
        for key, part in parts.items():
            train = key != "eval"
            loaders[key] = ResidentLoader(
                dataset.images, dataset.labels, config.batch_size, train=train, mean=dataset.mean,
                std=dataset.std, pad=4, flip=True, cutout=config.cutout if train else 0, shuffle=train,
                drop_last=train, seed=seeds[key], indices=part, **common)
    return loaders


def free_cores() -> int:
    """The cores the other jobs on this machine leave free (at least 1): the default --loader-threads."""
    return threads_for_load(usable_cores(), current_load())


def decode_seconds(loaders: Dict[str, Any]) -> float:
    """Seconds the loaders spent building their image stores (decoding the proxy's files once)."""
    return sum(loader.store_build.seconds for loader in loaders.values() if hasattr(loader, "store_build"))
