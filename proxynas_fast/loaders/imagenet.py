"""ImageNet (proxy) loading: one entry point, three backends.

`build_imagenet_loader(files, labels, ...)` reads exactly the given files (build them from the proxy
indices with `select_files`, never by filtering a scan of the whole set) and yields normalised
(x float32 [B, 3, S, S], y int64 [B]) batches on the requested device.

* backend "store" (the search's default): the files decoded once into an on-disk image store at reduced resolution, the
  transforms run on whole batches as tensor ops on the device (`imagenet_store.py`, `image_store.py`).
* backend "dali": NVIDIA DALI, JPEG decoding with nvJPEG ("mixed") on a GPU or DALI's CPU decoder
  otherwise (`imagenet_dali.py`).
* backend "pil": PIL + a torch DataLoader with worker processes (`imagenet_pil.py`): the paper's loader, decoding
  every file in every epoch.
* backend "auto": DALI when it is importable, else PIL (full-resolution decoding every epoch, for training on a
  whole data set that an on-disk store would not fit).

The backends apply the same transforms (the store's crops come from its stored square).  Train: random-resized crop to S (area 0.08-1, aspect
3/4-4/3), horizontal flip, colour jitter (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.2 as in
DARTS's ImageNet training), ImageNet normalisation.  Eval: resize the short side to S * 256 / 224,
centre crop S.  Greyscale (and CMYK) images are converted to RGB.  Both read, for every (seed, epoch,
rank), the same files in the same order (`sharding.py`: DistributedSampler rules); only the random
augmentation draws differ between backends.

Modules: `imagenet_base.py` (constants, `ImageNetLoaderOptions`, file checks, the base class), one module
per backend (each imports only the base), and this factory, which imports both.

Bad files: before the first epoch the selected files are checked in parallel (`check_files`:
"header" opens each file and parses its image header, "decode" also decodes it at 1/8 scale, which
still reads the whole JPEG stream and so catches truncated or corrupt data).  An unreadable file raises
`ImageFileError` naming it; with skip_bad_images=True it is logged and dropped instead (the default
check is then "decode", so that the epoch length is known before training starts).  A file that only
fails later, while an epoch runs, also raises `ImageFileError` naming it.  The store backend skips the separate
check: building its store decodes every file, and a file that fails raises (or, skipped, is dropped) there.
"""
from __future__ import annotations

import importlib
import os
from typing import Sequence

import numpy as np

# Re-exported: the public names of `proxynas_fast.loaders.imagenet` before the base moved out.
from proxynas_fast.loaders.imagenet_base import (CHECK_MODES, CROP_AREA, CROP_RATIO, EVAL_RESIZE_RATIO,
                                                 IMAGENET_MEAN, IMAGENET_STD, JITTER, ImageFileError,
                                                 ImageNetLoader, ImageNetLoaderOptions, check_image_files,
                                                 describe_bad_files, resolve_device)
from proxynas_fast.loaders.imagenet_dali import DaliImageNetLoader
from proxynas_fast.loaders.imagenet_pil import PilImageNetLoader
from proxynas_fast.loaders.imagenet_store import StoreImageNetLoader
from proxynas_fast.registry import Registry

__all__ = [
    "BACKENDS", "CHECK_MODES", "CROP_AREA", "CROP_RATIO", "EVAL_RESIZE_RATIO", "IMAGENET_MEAN", "IMAGENET_STD",
    "JITTER", "LOADER_BACKENDS", "DaliImageNetLoader", "ImageFileError", "ImageNetLoader", "ImageNetLoaderOptions",
    "PilImageNetLoader", "StoreImageNetLoader", "build_imagenet_loader", "check_image_files", "dali_available", "describe_bad_files",
    "resolve_device", "select_files",
]

LOADER_BACKENDS: Registry[type[ImageNetLoader]] = Registry("ImageNet loader backend")
LOADER_BACKENDS.register("store", obj=StoreImageNetLoader)
LOADER_BACKENDS.register("dali", obj=DaliImageNetLoader)
LOADER_BACKENDS.register("pil", obj=PilImageNetLoader)
BACKENDS = ("auto", *LOADER_BACKENDS.names())


def dali_missing() -> str | None:
    """None when NVIDIA DALI imports, else why not (one line)."""
    try:
        importlib.import_module("nvidia.dali")
    except Exception as e:  # noqa: BLE001 - any import failure means "no DALI"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}"
    return None


def dali_available() -> bool:
    return dali_missing() is None


class LoaderBackendError(ValueError):
    """A loader backend that is unknown or cannot run here; the message names it and says what to use."""


def check_backend(backend: str) -> str:
    """The registered backend `backend` stands for ("auto": DALI when it imports, else PIL); LoaderBackendError
    when it is unknown or its library is missing (call it before any long work)."""
    if backend != "auto" and backend not in LOADER_BACKENDS:  # asked now: a backend registered later counts
        raise LoaderBackendError(f"--loader-backend: must be one of {('auto', *LOADER_BACKENDS.names())}, "
                                 f"got {backend!r}")
    if backend == "auto":
        return "dali" if dali_available() else "pil"
    if backend == "dali":
        missing = dali_missing()
        if missing is not None:
            raise LoaderBackendError(f"--loader-backend dali: NVIDIA DALI does not import ({missing}); install "
                                     f"it (pip install nvidia-dali-cuda130) or use --loader-backend store or pil")
    return backend


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


def loader_class(backend: str) -> type[ImageNetLoader]:
    """The loader class of `backend` (see `check_backend`)."""
    return LOADER_BACKENDS.get(check_backend(backend))


def build_imagenet_loader(files: Sequence, labels: Sequence, batch_size: int, *, backend: str = "auto",
                          **options) -> ImageNetLoader:
    """An iterable of (x float32 [B, 3, S, S], y int64 [B]) on `device` over exactly `files`.

    `options`: the fields of `ImageNetLoaderOptions` (train, device, rank, world_size, num_threads, seed,
    skip_bad_images, image_size, shuffle, drop_last, check_files, store_size).  rank/world_size shard each epoch;
    call `set_epoch(e)` every epoch.  backend: "auto", "store", "dali" or "pil".  See the module docstring.
    """
    cls = loader_class(backend)
    return cls(files, labels, ImageNetLoaderOptions(batch_size=batch_size, **options))
