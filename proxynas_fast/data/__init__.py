"""Data sets with a stable example index (the original data-set order).

Small data sets (CIFAR-10/100, SVHN) load fully into memory as uint8 [N, 32, 32, 3] arrays
(`ArrayDataset`); ImageNet is a list of files (`FileDataset`). Position i of either is example
index i of the original data set, so entropy files, proxy index files and images always line up.
"""
from .base import ArrayDataset, DatasetError, FileDataset
from .registry import DATASETS, dataset_info, load_dataset, resolve_data_dir

__all__ = ["ArrayDataset", "FileDataset", "DatasetError", "DATASETS", "dataset_info", "load_dataset",
           "resolve_data_dir"]
