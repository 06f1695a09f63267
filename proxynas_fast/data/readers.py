"""Readers for the on-disk layouts of each data set. Each returns arrays in the original order."""
from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .base import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR pickle batch ({e})") from None


def read_cifar_pickle(root: Path, split: str, fine: bool) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """torchvision's `cifar-10-batches-py` / `cifar-100-python` layout."""
    if fine:
        files = [root / ("train" if split == "train" else "test")]
        meta = _unpickle(root / "meta") if (root / "meta").exists() else {}
        classes = meta.get("fine_label_names", [str(i) for i in range(100)])
        label_key = "fine_labels"
    else:
        files = [root / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [root / "test_batch"]
        meta = _unpickle(root / "batches.meta") if (root / "batches.meta").exists() else {}
        classes = meta.get("label_names", [str(i) for i in range(10)])
        label_key = "labels"
    images, labels = [], []
    for f in files:
        if not f.exists():
            raise DatasetError(f"{f}: missing CIFAR batch file")
        d = _unpickle(f)
        if "data" not in d or label_key not in d:
            raise DatasetError(f"{f}: CIFAR batch without 'data'/'{label_key}' entries")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{f}: expected rows of 3072 bytes, got shape {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), list(classes)


def read_svhn_mat(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """SVHN's `train_32x32.mat`: X is [32, 32, 3, N], y in 1..10 where 10 means digit 0."""
    from scipy.io import loadmat

    try:
        d = loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises several types for bad files
        raise DatasetError(f"{path}: not a readable SVHN .mat file ({e})") from None
    if "X" not in d or "y" not in d:
        raise DatasetError(f"{path}: SVHN .mat file without 'X'/'y'")
    x = np.asarray(d["X"], dtype=np.uint8)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: expected X of shape [32,32,3,N], got {x.shape}")
    y = np.asarray(d["y"], dtype=np.int64).reshape(-1) % 10
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y


def _decode_rgb(path: str, size: Optional[Tuple[int, int]]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e})") from None
    if size is not None and arr.shape[:2] != size:
        raise DatasetError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]}")
    return arr


def decode_images(paths: List[str], size: Tuple[int, int], threads: int = 0) -> np.ndarray:
    """Decode equally sized images into one uint8 [N, H, W, 3] array (threads: PIL releases the GIL)."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    threads = threads or min(8, os.cpu_count() or 1)

    def work(i):
        out[i] = _decode_rgb(paths[i], size)

    with ThreadPoolExecutor(max_workers=threads) as ex:
        list(ex.map(work, range(len(paths)), chunksize=256))
    return out


def list_class_folders(split_dir: Path) -> List[str]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir}: no class folders (<class>/<image> layout expected)")
    return classes


def list_image_folder(split_dir: Path) -> Tuple[List[str], np.ndarray, List[str]]:
    """All images under split_dir/<class>/, sorted by class then file name; labels = sorted class index."""
    classes = list_class_folders(split_dir)
    files, labels = [], []
    for ci, c in enumerate(classes):
        folder = os.path.join(str(split_dir), c)  # plain string joins: Path objects are slow over 50k files
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
        files += [os.path.join(folder, n) for n in names]
        labels += [ci] * len(names)
    if not files:
        raise DatasetError(f"{split_dir}: no image files found")
    return files, np.asarray(labels, np.int64), classes


def read_order_file(order_file: Path, root: Path, classes: List[str],
                    listed: Optional[List[str]] = None) -> Tuple[List[str], np.ndarray]:
    """`index<TAB>path<TAB>label` lines mapping the original example index to its file (relative to root).

    listed: the images found in the class folders (`list_image_folder`); when given, every line must name one
    of them and every one of them must have a line (a missing last line would otherwise drop an image). A path
    listed on two lines is an error naming both; a UTF-8 byte order mark (what some editors save) is skipped."""
    entries = {}
    line_of_path: dict = {}
    known = {os.path.normpath(p) for p in listed} if listed is not None else None
    root_str = str(root)  # plain string joins: Path objects cost seconds over 50k lines
    try:
        f = open(order_file, "rb")
    except OSError as e:
        raise DatasetError(f"{order_file}: cannot read the order file ({e.strerror})") from None
    with f:
        for lineno, line in _numbered_lines(f, order_file):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.split()
            if len(parts) != 3:
                raise DatasetError(f"{order_file}:{lineno}: expected 'index path label', got {s[:80]!r}")
            try:
                idx, label = int(parts[0]), int(parts[2])
            except ValueError:
                raise DatasetError(f"{order_file}:{lineno}: cannot parse index/label in {s[:80]!r}") from None
            if idx in entries:
                raise DatasetError(f"{order_file}:{lineno}: index {idx} appears twice")
            rel = parts[1]
            cls = os.path.basename(os.path.dirname(rel))
            if cls in classes and classes.index(cls) != label:
                raise DatasetError(f"{order_file}:{lineno}: label {label} disagrees with class folder {cls!r} "
                                   f"(index {classes.index(cls)})")
            path = os.path.normpath(os.path.join(root_str, rel))
            if known is not None and path not in known:
                why = "no such file" if not os.path.exists(path) else "not an image in the class folders"
                raise DatasetError(f"{order_file}:{lineno}: {rel}: {why}")
            if path in line_of_path:
                raise DatasetError(f"{order_file}:{lineno}: {rel} is also listed on line {line_of_path[path]}; "
                                   "each image needs exactly one line")
            line_of_path[path] = lineno
            entries[idx] = (path, label)
    n = len(entries)
    if sorted(entries) != list(range(n)):
        missing = sorted(set(range(n)) - set(entries))[:5]
        raise DatasetError(f"{order_file}: indices are not 0..{n - 1} (missing e.g. {missing})")
    files = [entries[i][0] for i in range(n)]
    unlisted = sorted(known.difference(files)) if known is not None else []
    if unlisted:
        raise DatasetError(f"{order_file}: {n} lines for {len(known)} images; {len(unlisted)} image(s) have no "
                           f"line, e.g. {os.path.relpath(unlisted[0], root_str)} (a line missing at the end?)")
    labels = np.asarray([entries[i][1] for i in range(n)], np.int64)
    return files, labels


def _numbered_lines(f, order_file):
    """(line number, text) of each line; a UTF-8 byte order mark is dropped, a line that is not UTF-8 is an error
    naming it (decoded line by line, so the number is exact)."""
    for lineno, raw in enumerate(f, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"{order_file}:{lineno}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r}); save "
                               "the order file as UTF-8") from None


def cache_key(files: List[str]) -> str:
    """Identifies a list of files by their paths, sizes and modification times. A path counts by where it leads
    (its folder resolved: relative or absolute spellings, symlinked folders), so `../shared/...` and
    `/work/shared/...` share one cache entry instead of decoding and storing the images twice."""
    h = hashlib.sha1()
    real_dirs: dict = {}
    for p in files:
        folder, name = os.path.split(p)
        real = real_dirs.get(folder)
        if real is None:
            real = real_dirs[folder] = os.path.realpath(folder or ".")
        st = os.stat(p)
        h.update(f"{os.path.join(real, name)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
