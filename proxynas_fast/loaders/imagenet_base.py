"""What the ImageNet loader backends share: the transform constants, the loader options, the file checks
and the base class (checked file list + epoch bookkeeping).  See `imagenet.py` for the whole story.

This module imports no backend: `imagenet_dali.py` and `imagenet_pil.py` import it, and the factory
(`imagenet.py`) imports them.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from proxynas_fast.loaders.sharding import ShardedEpochs

logger = logging.getLogger("proxynas_fast.loaders")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224  # eval: resize the short side to S * 256/224, then centre crop S
CHECK_MODES = ("header", "decode", "none")
# Train transforms of both backends: random-resized crop (area, aspect ratio) and colour jitter (DARTS).
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2}


class ImageFileError(RuntimeError):
    """An image file that cannot be opened or decoded; the message names the file."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class ImageNetLoaderOptions:
    """How an ImageNet loader reads its files (the keyword arguments of `build_imagenet_loader`).

    train: train transforms (else eval).  device: where batches land.  rank/world_size: DDP sharding of
    each epoch.  num_threads: DALI CPU threads or PIL DataLoader workers (0: decode in the main process).
    seed: the epoch order and augmentation.  skip_bad_images: log and drop unreadable files instead of
    raising.  image_size: S of the [B, 3, S, S] output.  shuffle: default `train`.  drop_last: only full
    batches.  check_files: "header", "decode" or "none" (default "header", "decode" with skip_bad_images).
    store_size: the image store's square side in pixels (store backend; None: its default).
    """

    batch_size: int
    train: bool = True
    device: str | torch.device = "cpu"
    rank: int = 0
    world_size: int = 1
    num_threads: int = 2
    seed: int = 0
    skip_bad_images: bool = False
    image_size: int = 224
    shuffle: bool | None = None
    drop_last: bool = False
    check_files: str | None = None
    store_size: int | None = None

    def __post_init__(self):
        if int(self.image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")
        if self.check_mode not in CHECK_MODES:
            raise ValueError(f"check_files must be one of {CHECK_MODES}, got {self.check_files!r}")

    @property
    def check_mode(self) -> str:
        return self.check_files or ("decode" if self.skip_bad_images else "header")


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


def _as_file_list(files: Sequence, labels: Sequence) -> tuple[list[str], list[int]]:
    files = [os.fspath(f) for f in files]
    labels = [int(label) for label in labels]
    if len(files) != len(labels):
        raise ValueError(f"files ({len(files)}) and labels ({len(labels)}) differ in length")
    if not files:
        raise ValueError("the ImageNet loader got an empty file list")
    return files, labels


class ImageNetLoader(ShardedEpochs):
    """What the backends share: the checked file list, the per-epoch order and sharding (`ShardedEpochs`),
    `len`, `set_epoch` and `state_dict`.  Subclasses implement `_iterate(epoch)`."""

    backend = "base"
    STATE_SIZE_KEY = "num_files"

    def __init__(self, files: Sequence, labels: Sequence, options: ImageNetLoaderOptions):
        files, labels = _as_file_list(files, labels)
        self.options = options
        self.train = bool(options.train)
        self._init_epochs(batch_size=options.batch_size, shuffle=self.train if options.shuffle is None
                          else options.shuffle, drop_last=options.drop_last, seed=options.seed, rank=options.rank,
                          world_size=options.world_size)
        self.device = resolve_device(options.device)
        self.num_threads = int(options.num_threads)
        self.skip_bad_images = bool(options.skip_bad_images)
        self.image_size = int(options.image_size)
        self.resize_size = int(round(self.image_size * EVAL_RESIZE_RATIO))
        self.files, self.labels = self._drop_unreadable(files, labels, options.check_mode)

    def _drop_unreadable(self, files: list[str], labels: list[int], check_mode: str) -> tuple[list[str], list[int]]:
        """The files (and labels) that pass the check: a bad file raises `ImageFileError`, or with
        skip_bad_images is logged, dropped and listed in `skipped_files`."""
        bad = [] if check_mode == "none" else check_image_files(files, check_mode, self.num_threads)
        if bad and not self.skip_bad_images:
            raise ImageFileError(describe_bad_files(bad), path=bad[0][0])
        for path, reason in bad:
            logger.warning("skipping unreadable image file %s: %s", path, reason)
        self.skipped_files = [path for path, _ in bad]
        if not bad:
            return files, labels
        dropped = set(self.skipped_files)
        kept = [(f, label) for f, label in zip(files, labels) if f not in dropped]
        if not kept:
            raise ImageFileError(f"every selected image file is unreadable: {describe_bad_files(bad)}")
        return [f for f, _ in kept], [label for _, label in kept]

    @property
    def num_examples(self) -> int:
        """The files of one epoch over all ranks (the readable ones), before padding to the world size."""
        return len(self.files)

    def rank_positions(self, epoch: int | None = None) -> list[int]:
        """Positions into `files` this rank reads in `epoch` (default: the current one), in reading order."""
        return self.rank_share(self.global_order(epoch)).tolist()

    def rank_files(self, epoch: int | None = None) -> list[str]:
        """The files this rank reads in `epoch` (default: the current one), in reading order."""
        return [self.files[i] for i in self.rank_positions(epoch)]

    def __iter__(self):
        return self._iterate(self.epoch)

    def _iterate(self, epoch: int):
        raise NotImplementedError
