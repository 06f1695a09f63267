"""Containers for loaded data sets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np


class DatasetError(ValueError):
    """A data set that cannot be used as given; the message names the path and the problem."""


@dataclass
class ArrayDataset:
    """A small image data set held in memory.

    images: uint8 [N, H, W, 3] (HWC); labels: int64 [N]; position i is original example index i.
    mean/std: the per-channel normalisation used for training, in [0, 1] units.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    source: str = ""

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DatasetError(f"{self.source}: images must be uint8 [N,H,W,3], got {self.images.dtype} "
                               f"{tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> "ArrayDataset":
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.name, self.split, self.images[idx], self.labels[idx], self.classes,
                            self.mean, self.std, self.source)


@dataclass
class LabelledFiles:
    """What the data sets that are lists of files share: the files and their labels, position i being example
    index i of the original data set, and the training normalisation."""

    name: str
    split: str
    files: List[str]
    labels: np.ndarray
    classes: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def __post_init__(self):
        if len(self.files) != len(self.labels):
            raise DatasetError(f"{getattr(self, 'source', '')}: {len(self.files)} files but {len(self.labels)} "
                               "labels")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class FileDataset(LabelledFiles):
    """A data set of image files (ImageNet layout); position i is example index i."""

    source: str = ""
    class_names: List[str] = field(default_factory=list)

    def __getitem__(self, i):
        return self.files[i], int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> "FileDataset":
        idx = np.asarray(indices, dtype=np.int64)
        return FileDataset(self.name, self.split, [self.files[i] for i in idx.tolist()], self.labels[idx],
                           self.classes, self.mean, self.std, self.source, self.class_names)
