"""Which data set a score file belongs to, and whether its rows fit that data set (no torch).

A score file names examples by their data-set index and carries their class label. For a known data set the
index must lie in 0..N-1 (N training examples) and the label in 0..C-1 (C classes); a proxy built from rows
outside those ranges would point the search at images that do not exist. A file that holds exactly one data
set's whole training set, with labels up to its last class, identifies that data set (`infer_dataset`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..data import DATASETS

# Training-set sizes of the data sets the paper uses (the index range of their score files).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "svhn": 73_257, "imagenet": 1_281_167}


def infer_dataset(table) -> Optional[str]:
    """The data set whose whole training set `table` is (size, index range and label range all match), or
    None when no data set, or more than one, fits."""
    n = len(table)
    top_label = int(table.label.max())
    fits = [name for name, size in TRAIN_SIZES.items()
            if n == size and int(table.index.max()) < size and top_label == DATASETS[name].num_classes - 1]
    return fits[0] if len(fits) == 1 else None


def _data_line_numbers(path: str, rows: np.ndarray) -> list[int]:
    """1-based line numbers in `path` of the given data rows (blank lines and `#` comments are not rows)."""
    wanted = {int(r): None for r in rows}
    row = -1
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            row += 1
            if row in wanted:
                wanted[row] = lineno
    return [wanted[int(r)] for r in rows]


def check_fits_dataset(table, dataset: str) -> None:
    """Raise ValueError naming the file and line of the first row whose index or label is outside `dataset`."""
    size, classes = TRAIN_SIZES[dataset], DATASETS[dataset].num_classes
    problems = []
    bad_index = np.flatnonzero((table.index < 0) | (table.index >= size))
    if bad_index.size:
        problems.append((int(bad_index[0]), f"example index {int(table.index[bad_index[0]])} is outside "
                                            f"0..{size - 1} ({dataset} has {size} training examples)",
                         bad_index.size))
    bad_label = np.flatnonzero((table.label < 0) | (table.label >= classes))
    if bad_label.size:
        problems.append((int(bad_label[0]), f"label {int(table.label[bad_label[0]])} is outside 0..{classes - 1} "
                                            f"({dataset} has {classes} classes)", bad_label.size))
    if not problems:
        return
    row, what, count = min(problems)
    line = _data_line_numbers(table.path, np.array([row]))[0]
    more = f" ({count} such rows)" if count > 1 else ""
    raise ValueError(f"{table.path}:{line}: {what}{more}")
