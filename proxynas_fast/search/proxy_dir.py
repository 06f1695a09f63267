"""`search --proxy DIR`: the proxy written by `python -m proxynas_fast.select --out DIR`, checked before use.

The folder holds proxy.txt (the selection), proxy_weights.txt and proxy_arch.txt (its two halves), each in the
`index entropy label` format. `read_proxy_dir` checks what needs no data set (the files exist and parse, the
halves are disjoint, non-empty and make up the selection); `check_proxy_matches` checks the examples against the
data set (indices in range, labels equal), so a folder made for another data set is refused with the file and the
first bad line's index, before the search starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from proxynas_fast.entropy_file import EntropyFileError, EntropyTable, read_entropy_file, write_entropy_file
from proxynas_fast.selection.split import PROXY_FILES

from .errors import SearchError


@dataclass
class ProxyFolder:
    path: Path
    tables: Dict[str, EntropyTable]  # "all", "weights", "arch"; each sorted by data-set index

    @property
    def selected(self) -> np.ndarray:
        return self.tables["all"].index

    @property
    def weights(self) -> np.ndarray:
        return self.tables["weights"].index

    @property
    def arch(self) -> np.ndarray:
        return self.tables["arch"].index


def read_proxy_dir(folder) -> ProxyFolder:
    """Read and cross-check the three proxy files of `folder` (SearchError naming the file on any problem)."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SearchError(f"--proxy {folder} {what} (expected the --out folder of `python -m proxynas_fast.select`)")
    tables = {}
    for key, name in PROXY_FILES.items():
        path = folder / name
        if not path.is_file():
            raise SearchError(f"--proxy {folder}: {name} is missing (write it with `python -m proxynas_fast.select "
                              f"--out {folder}` without --no-proxy-files)")
        try:
            tables[key] = read_entropy_file(path, allow_nonfinite=True).sorted_by_index()
        except EntropyFileError as e:
            raise SearchError(f"--proxy: {e}") from None
    everything, weights, arch = tables["all"], tables["weights"], tables["arch"]
    both = np.intersect1d(weights.index, arch.index)
    if both.size:
        raise SearchError(f"--proxy {folder}: {PROXY_FILES['weights']} and {PROXY_FILES['arch']} share "
                          f"{both.size} example(s), e.g. index {int(both[0])}; the halves must be disjoint")
    halves = np.sort(np.concatenate([weights.index, arch.index]))
    if not np.array_equal(halves, everything.index):
        extra = np.setdiff1d(halves, everything.index)
        missing = np.setdiff1d(everything.index, halves)
        why = (f"index {int(extra[0])} is in a half but not in {PROXY_FILES['all']}" if extra.size
               else f"index {int(missing[0])} of {PROXY_FILES['all']} is in neither half")
        raise SearchError(f"--proxy {folder}: the halves ({len(weights)} + {len(arch)} examples) do not make up "
                          f"{PROXY_FILES['all']} ({len(everything)} examples): {why}")
    _check_same_rows(folder, tables)
    return ProxyFolder(folder, tables)


def _check_same_rows(folder: Path, tables: Dict[str, EntropyTable]) -> None:
    """Each half's labels must be those proxy.txt gives its examples."""
    everything = tables["all"]
    for key in ("weights", "arch"):
        half = tables[key]
        where = np.searchsorted(everything.index, half.index)
        wrong = np.flatnonzero(everything.label[where] != half.label)
        if wrong.size:
            i = int(half.index[wrong[0]])
            raise SearchError(f"--proxy {folder}: {PROXY_FILES[key]} gives example {i} label "
                              f"{int(half.label[wrong[0]])}, {PROXY_FILES['all']} label "
                              f"{int(everything.label[where[wrong[0]]])}")


def check_proxy_matches(proxy: ProxyFolder, labels: Sequence[int], dataset_name: str) -> None:
    """The proxy's examples exist in the data set (0 <= index < N) and carry its labels."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    table = proxy.tables["all"]
    path = proxy.path / PROXY_FILES["all"]
    where = f"the {dataset_name} training set ({n} examples)"
    out_of_range = np.flatnonzero((table.index < 0) | (table.index >= n))
    if out_of_range.size:
        i = int(table.index[out_of_range[0]])
        raise SearchError(f"--proxy: {path}: example index {i} is not in {where} ({out_of_range.size} such "
                          f"index(es)); was the proxy selected for another data set?")
    wrong = np.flatnonzero(table.label != labels[table.index])
    if wrong.size:
        i = int(table.index[wrong[0]])
        raise SearchError(f"--proxy: {path}: labels disagree with {where} at {wrong.size} example(s); first: "
                          f"index {i} has label {int(table.label[wrong[0]])} in the file, {int(labels[i])} in the "
                          f"data set (a proxy for another data set or order?)")


def write_proxy_copy(out_dir, proxy: ProxyFolder) -> Dict[str, Path]:
    """Copy the three files into the run folder (what a resume reads), in the same format."""
    paths = {}
    for key, name in PROXY_FILES.items():
        t = proxy.tables[key]
        paths[key] = Path(out_dir) / name
        write_entropy_file(paths[key], t.index, t.entropy, t.label)
    return paths
