"""Reading and writing per-example score files in the paper's format: `index<TAB>entropy<TAB>label`.

The same format carries proxy index files (the selected examples with their entropies and labels).
Writes are atomic (temporary file + rename), so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from .atomic import atomic_write_text

PathLike = Union[str, os.PathLike]


class EntropyFileError(ValueError):
    """A score file that cannot be used; the message names the file and the line."""


@dataclass
class EntropyTable:
    index: np.ndarray  # int64, original data-set index of each example
    entropy: np.ndarray  # float64, nats
    label: np.ndarray  # int64
    path: str = "<memory>"

    def __len__(self) -> int:
        return len(self.index)

    def sorted_by_index(self) -> "EntropyTable":
        order = np.argsort(self.index, kind="stable")
        return EntropyTable(self.index[order], self.entropy[order], self.label[order], self.path)


def read_entropy_file(path: PathLike, *, allow_nonfinite: bool = False) -> EntropyTable:
    """Parse a score file. Whitespace-separated columns; blank lines and `#` comments are skipped.

    Raises EntropyFileError naming the file and line for a wrong column count, unparsable numbers,
    negative or non-finite entropies, and duplicate indices.
    """
    path = Path(path)
    if path.is_dir():
        raise EntropyFileError(f"entropy file {path} is a folder; name a score file (index entropy label lines)")
    if not path.is_file():
        raise FileNotFoundError(f"entropy file {path} does not exist")
    idx, ent, lab = [], [], []
    first_line = {}  # example index -> the line it is first on
    # utf-8-sig: a byte order mark (what some editors save) is no part of the first index
    with open(path, "r", encoding="utf-8-sig", errors="strict") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as e:
            raise EntropyFileError(f"{path}: not a text file ({e})") from None
    for lineno, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) != 3:
            raise EntropyFileError(
                f"{path}:{lineno}: expected 3 columns 'index entropy label', got {len(parts)}: {s[:80]!r}")
        try:
            i, e, c = int(parts[0]), float(parts[1]), float(parts[2])
        except ValueError:
            raise EntropyFileError(f"{path}:{lineno}: cannot parse numbers in {s[:80]!r}") from None
        if not c.is_integer():
            raise EntropyFileError(f"{path}:{lineno}: label {parts[2]} is not a whole number")
        c = int(c)
        if not allow_nonfinite and not math.isfinite(e):
            raise EntropyFileError(f"{path}:{lineno}: entropy is {parts[1]} (must be a finite number of nats)")
        if e < 0:
            raise EntropyFileError(f"{path}:{lineno}: entropy {e} is negative")
        if i in first_line:
            raise EntropyFileError(f"{path}:{lineno}: duplicate example index {i} (also on line {first_line[i]})")
        first_line[i] = lineno
        idx.append(i)
        ent.append(e)
        lab.append(c)
    if not idx:
        raise EntropyFileError(f"{path}: no entries")
    table = EntropyTable(np.asarray(idx, np.int64), np.asarray(ent, np.float64), np.asarray(lab, np.int64), str(path))
    return table


def write_entropy_file(path: PathLike, index, entropy, label) -> None:
    """Write `index<TAB>entropy<TAB>label` lines (entropy with full float precision), atomically."""
    index = np.asarray(index, np.int64)
    entropy = np.asarray(entropy, np.float64)
    label = np.asarray(label, np.int64)
    if not (len(index) == len(entropy) == len(label)):
        raise ValueError(f"{path}: mismatched lengths index={len(index)} entropy={len(entropy)} label={len(label)}")
    lines = [f"{i}\t{repr(float(e))}\t{c}\n" for i, e, c in zip(index.tolist(), entropy.tolist(), label.tolist())]
    atomic_write_text(path, "".join(lines))
