'''Data sets by name: `load_dataset(name, data_dir, split)` finds a data set's layout under a folder and loads it.

Each data set is one class registered in `DATASET_SOURCES` (a `proxynas_fast.registry.Registry`, like the
selectors and search strategies): it holds its `DatasetInfo` and its own `load(root, split, download)`. The
built-in ones (cifar10, cifar100, svhn, imagenet) are in `datasets.py`. A newcomer adds one like this:

    @DATASET_SOURCES.register()
    class MNIST(DatasetSource):
        """<split>.npz with uint8 images [N, 32, 32, 3] and int64 labels (also inside mnist/)"""
        info = DatasetInfo("mnist", 10, 32, (0.13,) * 3, (0.31,) * 3, 0.5, "resnet20", (0.13,) * 3, (0.31,) * 3)

        @classmethod
        def load(cls, root, split, download):
            path = root / "mnist" / f"{split}.npz"
            if not path.is_file():
                raise DatasetError(f"mnist not found under {root}: put mnist/{split}.npz there")
            arrays = np.load(path)
            return cls.arrays(split, arrays["images"], arrays["labels"], [str(d) for d in range(10)], path)

`load_dataset("mnist", ...)`, `dataset_info("mnist")`, `DATASETS["mnist"]` and `list_datasets()` then know it.
'''
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, List, Mapping, Tuple, Type, Union

from ..registry import Registry
from .base import ArrayDataset, DatasetError, FileDataset
from .lazy import LazyImageDataset

Norm = Tuple[float, float, float]

IMAGENET_MEAN: Norm = (0.485, 0.456, 0.406)
IMAGENET_STD: Norm = (0.229, 0.224, 0.225)

SPLITS = ("train", "test", "val")


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


class DatasetSource:
    """A data set `load_dataset` can load: its facts (`info`) and how to find and read it under a folder.
    Sources keep no state: `load` is a classmethod, and `name` is `info.name` (set when the class is made)."""

    info: ClassVar[DatasetInfo]
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "info" in cls.__dict__:
            cls.name = cls.info.name

    @classmethod
    def load(cls, root: Path, split: str, download: bool) -> Union[ArrayDataset, FileDataset]:
        """The `split` ("train", "test" or "val") found under the existing folder `root`, in the original example
        order; fetch it first when absent and `download` allows; else a DatasetError saying what to put where."""
        raise NotImplementedError(f"data set {cls.__name__} defines no load()")

    @classmethod
    def load_lazy(cls, root: Path, split: str, download: bool) -> Union[ArrayDataset, FileDataset, LazyImageDataset]:
        """Like `load`, but a layout of image files may come back as a `LazyImageDataset` that decodes only what is
        asked for; by default (a source with no such layout) `load` itself."""
        return cls.load(root, split, download)

    @classmethod
    def arrays(cls, split: str, images, labels, classes: List[str], source) -> ArrayDataset:
        """Images held in memory, with this data set's training normalisation."""
        return ArrayDataset(cls.name, split, images, labels, classes, cls.info.train_mean, cls.info.train_std,
                            str(source))


DATASET_SOURCES: Registry[Type[DatasetSource]] = Registry("data set", error=DatasetError)


class _InfoByName(Mapping):
    """name -> DatasetInfo of every registered data set, in registration order (a read-only view)."""

    def __getitem__(self, name: str) -> DatasetInfo:
        if name not in DATASET_SOURCES.names():  # exact names, as a dict's keys
            raise KeyError(name)
        return DATASET_SOURCES.get(name).info

    def __iter__(self) -> Iterator[str]:
        return iter(DATASET_SOURCES.names())

    def __len__(self) -> int:
        return len(DATASET_SOURCES)

    def __repr__(self) -> str:
        return repr(dict(self))


DATASETS: Mapping[str, DatasetInfo] = _InfoByName()


def list_datasets() -> List[str]:
    """The data set names, in registration order."""
    return DATASET_SOURCES.names()


def dataset_info(name: str) -> DatasetInfo:
    """The facts of data set `name`; an unknown name raises a DatasetError naming the known ones."""
    return DATASET_SOURCES.get(name).info


def resolve_data_dir(data_dir: Union[str, os.PathLike, None] = None) -> Path:
    """--data-dir if given, else $PROXYNAS_DATA, else ./data."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("PROXYNAS_DATA")
    return Path(env).expanduser() if env else Path("data")


def load_dataset(name: str, data_dir=None, split: str = "train", download: bool = True, lazy: bool = False):
    """Load a data set in its original example order (`ArrayDataset`, or `FileDataset` for ImageNet).

    data_dir: see `resolve_data_dir`. The layouts each data set looks for under it are in its class's
    docstring (`datasets.py`); CIFAR-10/100 and SVHN are downloaded when absent and `download` is true.
    lazy: an image-folder layout (CIFAR-10/100 JPEGs) comes back as a `LazyImageDataset` that decodes only the
    examples asked for (`subset`, `images_of`); other layouts load as without it.
    """
    source = DATASET_SOURCES.get(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist (pass --data-dir or set PROXYNAS_DATA)")
    return source.load_lazy(root, split, download) if lazy else source.load(root, split, download)
