"""Data sets with a stable example index (the original data-set order).

Small data sets (CIFAR-10/100, SVHN) load fully into memory as uint8 [N, 32, 32, 3] arrays
(`ArrayDataset`); ImageNet is a list of files (`FileDataset`); `load_dataset(..., lazy=True)` returns the
CIFAR JPEG folders as a `LazyImageDataset` that decodes only the examples asked for. Position i of any of them
is example index i of the original data set, so entropy files, proxy index files and images always line up.
`list_datasets()` names the data sets; add one with a decorated class (see `registry.py`).
"""
from .base import ArrayDataset, DatasetError, FileDataset
from .lazy import LazyImageDataset, materialize
from .registry import (DATASET_SOURCES, DATASETS, DatasetInfo, DatasetSource, dataset_info, list_datasets,
                       load_dataset, resolve_data_dir)
from . import datasets as _datasets  # noqa: F401  (registers cifar10, cifar100, svhn, imagenet)

__all__ = ["ArrayDataset", "FileDataset", "LazyImageDataset", "materialize", "DatasetError", "DATASETS",
           "DATASET_SOURCES", "DatasetInfo", "DatasetSource", "dataset_info", "list_datasets", "load_dataset",
           "resolve_data_dir"]
