"""`load_dataset(name, data_dir, split)`: finds a data set's layout under a folder and loads it."""
from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from .base import ArrayDataset, DatasetError, FileDataset
from .image_cache import entry_path, load_entry, store_entry
from .readers import (cache_key, decode_images, list_image_folder, read_cifar_pickle, read_order_file,
                      read_svhn_mat)

log = logging.getLogger(__name__)

Norm = Tuple[float, float, float]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    train_mean: Norm  # normalisation for search / training
    train_std: Norm
    bin_width: float  # the paper's histogram bin width over log10(entropy)
    scorer_arch: str  # the paper's scorer network
    scorer_mean: Norm  # normalisation the paper's scorer was trained with
    scorer_std: Norm


IMAGENET_MEAN: Norm = (0.485, 0.456, 0.406)
IMAGENET_STD: Norm = (0.229, 0.224, 0.225)

DATASETS: Dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 0.5,
                           "resnet20", IMAGENET_MEAN, IMAGENET_STD),
    "cifar100": DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 0.25,
                            "resnet56", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": DatasetInfo("svhn", 10, 32, (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197), 0.2,
                        "resnet20", (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
    "imagenet": DatasetInfo("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD, 0.25,
                            "resnet50", IMAGENET_MEAN, IMAGENET_STD),
}

# Official archives (fetched only when the data set is absent and the network allows it).
_DOWNLOADS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "cifar-100-python"),
    "svhn_train": ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373",
                   "train_32x32.mat"),
    "svhn_test": ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3",
                  "test_32x32.mat"),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}") from None


def resolve_data_dir(data_dir: Union[str, os.PathLike, None] = None) -> Path:
    """--data-dir if given, else $PROXYNAS_DATA, else ./data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("PROXYNAS_DATA")
    return Path(env).expanduser() if env else Path("data")


def _download(key: str, dest_dir: Path) -> Path:
    import hashlib

    url, md5, name = _DOWNLOADS[key]
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(dest_dir), prefix=".download.")
    os.close(fd)
    try:
        log.info("downloading %s", url)
        urllib.request.urlretrieve(url, tmp)
        digest = hashlib.md5(Path(tmp).read_bytes()).hexdigest()
        if digest != md5:
            raise DatasetError(f"{url}: checksum mismatch ({digest} != {md5})")
        if url.endswith(".tar.gz"):
            with tarfile.open(tmp, "r:gz") as tf:
                tf.extractall(dest_dir, filter="data")
        else:
            os.replace(tmp, dest_dir / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest_dir / name


def _missing(name: str, root: Path, expected: str, reason: str = "") -> DatasetError:
    extra = f" (download failed: {reason})" if reason else ""
    return DatasetError(f"{name} not found under {root}{extra}. Put {expected} there, or pass --data-dir / "
                        f"set PROXYNAS_DATA to the folder that holds it.")


def _load_image_folder(name: str, root: Path, split: str, info: DatasetInfo) -> ArrayDataset:
    split_dir = root / split
    files, labels, classes = list_image_folder(split_dir)
    order_file = root / f"{split}_order.txt"
    if order_file.exists():
        files, labels = read_order_file(order_file, root, classes, listed=files)
    if len(classes) != info.num_classes:
        raise DatasetError(f"{split_dir}: {len(classes)} class folders, {name} has {info.num_classes}")
    cache = entry_path(name, split, cache_key(files))
    images = load_entry(cache, (len(files), info.image_size, info.image_size, 3))
    if images is None:
        images = decode_images(files, (info.image_size, info.image_size))
        store_entry(cache, images)
    return ArrayDataset(name, split, images, labels, classes, info.train_mean, info.train_std, str(split_dir))


def _find_first(root: Path, candidates) -> Optional[Path]:
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    return None


def load_dataset(name: str, data_dir=None, split: str = "train", download: bool = True):
    """Load a data set in its original example order.

    Layouts looked for under data_dir (first match wins):
      cifar10:  cifar-10-batches-py/ (torchvision pickles), or <split>/<class>/*.jpg with optional
                <split>_order.txt (index path label), also inside a cifar10-jpeg/ subfolder
      cifar100: cifar-100-python/, or the image-folder layout as above
      svhn:     <split>_32x32.mat (also inside svhn/)
      imagenet: <split>/<wnid>/*.JPEG (also inside imagenet/); labels are the sorted wnids
    """
    info = dataset_info(name)
    if split not in ("train", "test", "val"):
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist (pass --data-dir or set PROXYNAS_DATA)")

    if name in ("cifar10", "cifar100"):
        fine = name == "cifar100"
        pickle_dir = "cifar-100-python" if fine else "cifar-10-batches-py"
        if (root / pickle_dir).is_dir():
            found = root / pickle_dir
        elif (root / ("train" if fine else "data_batch_1")).is_file():
            found = root  # data_dir is the pickle folder itself
        else:
            found = None
        if found is not None:
            images, labels, classes = read_cifar_pickle(found, "train" if split == "train" else "test", fine)
            return ArrayDataset(name, split, images, labels, classes, info.train_mean, info.train_std, str(found))
        for folder in (root, root / f"{name}-jpeg", root / name):
            if (folder / split).is_dir():
                return _load_image_folder(name, folder, split, info)
        reason = ""
        if download:
            try:
                _download(name, root)
                return load_dataset(name, root, split, download=False)
            except (OSError, DatasetError) as e:
                reason = str(e)
        raise _missing(name, root, f"{pickle_dir}/ (torchvision layout) or {split}/<class>/*.jpg", reason)

    if name == "svhn":
        fname = f"{'train' if split == 'train' else 'test'}_32x32.mat"
        found = _find_first(root, [fname, f"svhn/{fname}"])
        if found is None:
            reason = ""
            if download:
                try:
                    found = _download(f"svhn_{'train' if split == 'train' else 'test'}", root)
                except (OSError, DatasetError) as e:
                    reason = str(e)
            if found is None:
                raise _missing(name, root, fname, reason)
        images, labels = read_svhn_mat(found)
        classes = [str(d) for d in range(10)]
        return ArrayDataset(name, split, images, labels, classes, info.train_mean, info.train_std, str(found))

    # ImageNet: never downloaded (licence); the folder layout is required.
    split_name = "train" if split == "train" else "val"
    for folder in (root, root / "imagenet"):
        if (folder / split_name).is_dir():
            files, labels, classes = list_image_folder(folder / split_name)
            return FileDataset(name, split, files, labels, classes, info.train_mean, info.train_std,
                               str(folder / split_name))
    raise _missing(name, root, f"{split_name}/<wnid>/*.JPEG (the ImageNet folder layout)")
