"""The built-in data sets, one registered `DatasetSource` class each: where each is looked for under the data
folder (first match wins) and, for CIFAR-10/100 and SVHN, the official archives fetched when it is absent."""
from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterable, Optional, Tuple

from .base import DatasetError, FileDataset
from .lazy import LazyImageDataset, materialize
from .readers import list_image_folder, read_cifar_pickle, read_order_file, read_svhn_mat
from .registry import DATASET_SOURCES, IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, DatasetSource

log = logging.getLogger(__name__)

# Official archives (fetched only when the data set is absent and the network allows it): url, md5, what it unpacks.
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


def _download(key: str, dest_dir: Path) -> Path:
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


def _fetch(key: str, root: Path, download: bool) -> Tuple[Optional[Path], str]:
    """Download `key` into root when allowed: (what it unpacked, "") or (None, why it failed or "")."""
    if not download:
        return None, ""
    try:
        return _download(key, root), ""
    except (OSError, DatasetError) as e:
        return None, str(e)


def _missing(name: str, root: Path, expected: str, reason: str = "") -> DatasetError:
    extra = f" (download failed: {reason})" if reason else ""
    return DatasetError(f"{name} not found under {root}{extra}. Put {expected} there, or pass --data-dir / "
                        f"set PROXYNAS_DATA to the folder that holds it.")


def _first(paths: Iterable[Path], exists=Path.exists) -> Optional[Path]:
    return next((p for p in paths if exists(p)), None)


@DATASET_SOURCES.register()
class CIFAR10(DatasetSource):
    """cifar-10-batches-py/ (torchvision pickles; data_dir may be that folder), or <split>/<class>/*.jpg with
    optional <split>_order.txt (index path label), also inside cifar10-jpeg/ or cifar10/; downloaded if absent."""

    info = DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 0.5,
                       "resnet20", IMAGENET_MEAN, IMAGENET_STD)
    pickle_dir = "cifar-10-batches-py"
    pickle_marker = "data_batch_1"  # a file that says data_dir is the pickle folder itself
    fine_labels = False

    @classmethod
    def load(cls, root: Path, split: str, download: bool):
        return materialize(cls.load_lazy(root, split, download))

    @classmethod
    def load_lazy(cls, root: Path, split: str, download: bool):
        """The pickles in memory, or the image-folder layout as a `LazyImageDataset` (nothing decoded yet)."""
        pickles = cls.pickle_folder(root)
        if pickles is not None:
            images, labels, classes = read_cifar_pickle(pickles, "train" if split == "train" else "test",
                                                        cls.fine_labels)
            return cls.arrays(split, images, labels, classes, pickles)
        split_dir = _first([root / split, root / f"{cls.name}-jpeg" / split, root / cls.name / split], Path.is_dir)
        if split_dir is not None:
            return cls.image_folder(split_dir.parent, split)
        fetched, reason = _fetch(cls.name, root, download)
        if fetched is not None:
            return cls.load_lazy(root, split, download=False)
        raise _missing(cls.name, root, f"{cls.pickle_dir}/ (torchvision layout) or {split}/<class>/*.jpg", reason)

    @classmethod
    def pickle_folder(cls, root: Path) -> Optional[Path]:
        """The torchvision pickle folder under root, or root itself when it is that folder."""
        if (root / cls.pickle_dir).is_dir():
            return root / cls.pickle_dir
        return root if (root / cls.pickle_marker).is_file() else None

    @classmethod
    def load_image_folder(cls, root: Path, split: str):
        """<split>/<class>/*.jpg under root, in the order of <split>_order.txt when present, all decoded (the
        decoded images are cached, see image_cache)."""
        return cls.image_folder(root, split).decoded()

    @classmethod
    def image_folder(cls, root: Path, split: str) -> LazyImageDataset:
        """<split>/<class>/*.jpg under root, in the order of <split>_order.txt when present; decoded on demand."""
        split_dir, size = root / split, cls.info.image_size
        files, labels, classes = list_image_folder(split_dir)
        order_file = root / f"{split}_order.txt"
        if order_file.exists():
            files, labels = read_order_file(order_file, root, classes, listed=files)
        if len(classes) != cls.info.num_classes:
            raise DatasetError(f"{split_dir}: {len(classes)} class folders, {cls.name} has {cls.info.num_classes}")
        return LazyImageDataset(cls.name, split, files, labels, classes, cls.info.train_mean, cls.info.train_std,
                                (size, size), str(split_dir))


@DATASET_SOURCES.register()
class CIFAR100(CIFAR10):
    """cifar-100-python/ (torchvision pickles; data_dir may be that folder), or the image-folder layout of
    CIFAR-10 (also inside cifar100-jpeg/ or cifar100/); downloaded if absent."""

    info = DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 0.25,
                       "resnet56", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    pickle_dir = "cifar-100-python"
    pickle_marker = "train"
    fine_labels = True


@DATASET_SOURCES.register()
class SVHN(DatasetSource):
    """<split>_32x32.mat for train or test (also inside svhn/); downloaded if absent."""

    info = DatasetInfo("svhn", 10, 32, (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197), 0.2,
                       "resnet20", (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197))

    @classmethod
    def load(cls, root: Path, split: str, download: bool):
        part = "train" if split == "train" else "test"
        fname = f"{part}_32x32.mat"
        found, reason = _first([root / fname, root / "svhn" / fname]), ""
        if found is None:
            found, reason = _fetch(f"svhn_{part}", root, download)
        if found is None:
            raise _missing(cls.name, root, fname, reason)
        images, labels = read_svhn_mat(found)
        return cls.arrays(split, images, labels, [str(d) for d in range(10)], found)


@DATASET_SOURCES.register()
class ImageNet(DatasetSource):
    """train/<wnid>/*.JPEG, or val/ for the other splits (also inside imagenet/); labels are the sorted wnids.
    Never downloaded (licence)."""

    info = DatasetInfo("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD, 0.25, "resnet50", IMAGENET_MEAN,
                       IMAGENET_STD)

    @classmethod
    def load(cls, root: Path, split: str, download: bool):
        split_name = "train" if split == "train" else "val"
        split_dir = _first([root / split_name, root / "imagenet" / split_name], Path.is_dir)
        if split_dir is None:
            raise _missing(cls.name, root, f"{split_name}/<wnid>/*.JPEG (the ImageNet folder layout)")
        files, labels, classes = list_image_folder(split_dir)
        return FileDataset(cls.name, split, files, labels, classes, cls.info.train_mean, cls.info.train_std,
                           str(split_dir))
