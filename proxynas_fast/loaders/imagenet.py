"""ImageNet (proxy) loading: one entry point, two backends.

`build_imagenet_loader(files, labels, ...)` reads exactly the given files (build them from the proxy
indices with `select_files`, never by filtering a scan of the whole set) and yields normalised
(x float32 [B, 3, S, S], y int64 [B]) batches on the requested device.

* backend "dali": NVIDIA DALI, JPEG decoding with nvJPEG ("mixed") on a GPU or DALI's CPU decoder
  otherwise (`imagenet_dali.py`).
* backend "pil": PIL + a torch DataLoader with worker processes (`imagenet_pil.py`).
* backend "auto": DALI when it is importable, else PIL.

Both backends apply the same transforms.  Train: random-resized crop to S (area 0.08-1, aspect
3/4-4/3), horizontal flip, colour jitter (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.2 as in
DARTS's ImageNet training), ImageNet normalisation.  Eval: resize the short side to S * 256 / 224,
centre crop S.  Greyscale (and CMYK) images are converted to RGB.  Both read, for every (seed, epoch,
rank), the same files in the same order (`sharding.py`: DistributedSampler rules); only the random
augmentation draws differ between backends.

Bad files: before the first epoch the selected files are checked in parallel (`check_files`:
"header" opens each file and parses its image header, "decode" also decodes it at 1/8 scale, which
still reads the whole JPEG stream and so catches truncated or corrupt data).  An unreadable file raises
`ImageFileError` naming it; with skip_bad_images=True it is logged and dropped instead (the default
check is then "decode", so that the epoch length is known before training starts).  A file that only
fails later, while an epoch runs, also raises `ImageFileError` naming it.
"""
from __future__ import annotations

import importlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from proxynas_fast.loaders.sharding import (
    check_shard_args,
    epoch_generator,
    examples_per_rank,
    global_epoch_order,
    num_batches,
    take_rank,
)

logger = logging.getLogger("proxynas_fast.loaders")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224  # eval: resize the short side to S * 256/224, then centre crop S
CHECK_MODES = ("header", "decode", "none")
BACKENDS = ("auto", "dali", "pil")


class ImageFileError(RuntimeError):
    """An image file that cannot be opened or decoded; the message names the file."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


def dali_available() -> bool:
    try:
        importlib.import_module("nvidia.dali")
    except Exception:  # noqa: BLE001 - any import failure means "use the PIL backend"
        return False
    return True


def select_files(files: Sequence, labels: Sequence, indices) -> tuple[list[str], list[int]]:
    """The proxy's file list and labels: `files[i]`, `labels[i]` for i in `indices` (e.g. the proxy
    index file read into an array; FileDataset.files / .labels as `files` / `labels`)."""
    if len(files) != len(labels):
        raise ValueError(f"files ({len(files)}) and labels ({len(labels)}) differ in length")
    index = np.asarray(indices)
    if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
        raise ValueError(f"indices must be a 1-D integer array, got {index.dtype} {index.shape}")
    if index.size and (index.min() < 0 or index.max() >= len(files)):
        raise ValueError(f"indices must lie in [0, {len(files)}), got range [{index.min()}, {index.max()}]")
    return [os.fspath(files[i]) for i in index], [int(labels[i]) for i in index]


def _check_one(path: str, mode: str) -> str | None:
    """None if `path` passes the check, else the reason it does not."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                return f"empty image ({width}x{height})"
            if mode == "decode":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # JPEG: cheap DCT scaling
                image.load()
    except Exception as e:  # noqa: BLE001 - every failure is a reason to report
        return f"{type(e).__name__}: {e}"
    return None


def check_image_files(files: Sequence[str], mode: str = "header", num_threads: int = 2) -> list[tuple[str, str]]:
    """(path, reason) for every file in `files` that fails the `mode` check ("header" or "decode")."""
    if mode not in ("header", "decode"):
        raise ValueError(f"check mode must be 'header' or 'decode', got {mode!r}")
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:  # PIL releases the GIL in I/O and decoding
        reasons = list(pool.map(lambda path: _check_one(path, mode), files))
    return [(path, reason) for path, reason in zip(files, reasons) if reason is not None]


def describe_bad_files(bad: Sequence[tuple[str, str]], limit: int = 5) -> str:
    lines = [f"unreadable image file {path}: {reason}" for path, reason in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    return "; ".join(lines)


def resolve_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} was requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return device


class ImageNetLoader:
    """Epoch bookkeeping shared by the backends: the checked file list, per-epoch order, sharding,
    `len`, `set_epoch` and `state_dict`.  Subclasses implement `_iterate(positions)`."""

    backend = "base"

    def __init__(
        self,
        files: Sequence,
        labels: Sequence,
        batch_size: int,
        *,
        train: bool = True,
        device="cpu",
        rank: int = 0,
        world_size: int = 1,
        num_threads: int = 2,
        seed: int = 0,
        skip_bad_images: bool = False,
        image_size: int = 224,
        shuffle: bool | None = None,
        drop_last: bool = False,
        check_files: str | None = None,
    ):
        files = [os.fspath(f) for f in files]
        labels = [int(label) for label in labels]
        if len(files) != len(labels):
            raise ValueError(f"files ({len(files)}) and labels ({len(labels)}) differ in length")
        if not files:
            raise ValueError("the ImageNet loader got an empty file list")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        check_shard_args(rank, world_size)
        check_mode = check_files or ("decode" if skip_bad_images else "header")
        if check_mode not in CHECK_MODES:
            raise ValueError(f"check_files must be one of {CHECK_MODES}, got {check_files!r}")

        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.shuffle = self.train if shuffle is None else bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_threads = int(num_threads)
        self.seed = int(seed)
        self.skip_bad_images = bool(skip_bad_images)
        self.image_size = int(image_size)
        self.resize_size = int(round(self.image_size * EVAL_RESIZE_RATIO))
        self.epoch = 0

        bad = [] if check_mode == "none" else check_image_files(files, check_mode, self.num_threads)
        if bad and not self.skip_bad_images:
            raise ImageFileError(describe_bad_files(bad), path=bad[0][0])
        for path, reason in bad:
            logger.warning("skipping unreadable image file %s: %s", path, reason)
        self.skipped_files = [path for path, _ in bad]
        if bad:
            dropped = set(self.skipped_files)
            kept = [(f, label) for f, label in zip(files, labels) if f not in dropped]
            if not kept:
                raise ImageFileError(f"every selected image file is unreadable: {describe_bad_files(bad)}")
            files, labels = [f for f, _ in kept], [label for _, label in kept]
        self.files = files  # exactly the files this loader (all ranks together) reads
        self.labels = labels

    # ------------------------------------------------------------------ epoch bookkeeping
    @property
    def examples_per_rank(self) -> int:
        return examples_per_rank(len(self.files), self.world_size, self.drop_last)

    def __len__(self) -> int:
        return num_batches(self.examples_per_rank, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "world_size": self.world_size,
                "num_files": len(self.files)}

    def load_state_dict(self, state: dict) -> None:
        mine = {"seed": self.seed, "world_size": self.world_size, "num_files": len(self.files)}
        for key, value in mine.items():
            if key in state and int(state[key]) != value:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {key}={value}: "
                                 "the resumed run would not reproduce the saved order")
        self.set_epoch(int(state["epoch"]))

    def global_order(self, epoch: int | None = None) -> torch.Tensor:
        """Positions into `files` for one epoch over all ranks (padded/truncated to the world size)."""
        generator = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        return global_epoch_order(len(self.files), generator, shuffle=self.shuffle,
                                  world_size=self.world_size, drop_last=self.drop_last)

    def rank_files(self, epoch: int | None = None) -> list[str]:
        """The files this rank reads in `epoch` (default: the current one), in reading order."""
        return [self.files[i] for i in take_rank(self.global_order(epoch), self.rank, self.world_size).tolist()]

    def __iter__(self):
        return self._iterate(self.epoch)

    def _iterate(self, epoch: int):
        raise NotImplementedError


def build_imagenet_loader(
    files: Sequence,
    labels: Sequence,
    batch_size: int,
    *,
    train: bool = True,
    device="cpu",
    backend: str = "auto",
    rank: int = 0,
    world_size: int = 1,
    num_threads: int = 2,
    seed: int = 0,
    skip_bad_images: bool = False,
    image_size: int = 224,
    shuffle: bool | None = None,
    drop_last: bool = False,
    check_files: str | None = None,
) -> ImageNetLoader:
    """An iterable of (x float32 [B, 3, S, S], y int64 [B]) on `device` over exactly `files`.

    rank/world_size shard each epoch; call `set_epoch(e)` every epoch.  num_threads: DALI CPU threads
    or PIL DataLoader workers (0: decode in the main process).  check_files: "header", "decode" or
    "none" (default "header", or "decode" with skip_bad_images).  See the module docstring.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "dali" if dali_available() else "pil"
    if backend == "dali":
        if not dali_available():
            raise ImportError("backend='dali' needs NVIDIA DALI (pip install nvidia-dali-cuda130); "
                              "use backend='pil' or 'auto' without it")
        from proxynas_fast.loaders.imagenet_dali import DaliImageNetLoader as loader_class
    else:
        from proxynas_fast.loaders.imagenet_pil import PilImageNetLoader as loader_class
    return loader_class(
        files, labels, batch_size, train=train, device=device, rank=rank, world_size=world_size,
        num_threads=num_threads, seed=seed, skip_bad_images=skip_bad_images, image_size=image_size,
        shuffle=shuffle, drop_last=drop_last, check_files=check_files)
