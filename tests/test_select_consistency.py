"""`select` depends only on its input's content and equals the selection `search` makes (issue 28, item 5).

The same rows in another order, with other whitespace, CRLF line ends, a byte order mark or no final newline
give byte-identical proxy files; on the paper's CIFAR-10 list, `select` with its defaults and the search
pipeline's own selection (no --proxy) with its defaults choose the same examples and the same halves."""
from __future__ import annotations

import json

import numpy as np
import pytest

from proxynas_fast.select import build_parser as select_parser
from proxynas_fast.select import main as select_main
from proxynas_fast.selection import DEFAULT_SEED, PROXY_FILES

PROXY_AND_SUMMARY = [*PROXY_FILES.values(), "summary.txt"]


@pytest.fixture(scope="module")
def cifar10_file(reference_entropy_dir):
    return reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"


def _outputs(folder):
    files = {name: (folder / name).read_bytes() for name in PROXY_AND_SUMMARY}
    return files, json.loads((folder / "summary.json").read_text())


def _rewritten(rows, folder, *, sep, newline, bom=b"", final_newline=True):
    folder.mkdir()
    path = folder / "cifar10_resnet20_index_entropy_class.txt"  # the summaries name the file
    text = newline.join(sep.join(row) for row in rows) + (newline if final_newline else "")
    path.write_bytes(bom + text.encode())
    return path


@pytest.mark.parametrize("method", ["p1", "random", "high_entropy"])
def test_row_order_and_layout_do_not_change_the_selection(cifar10_file, tmp_path, method):
    rows = [line.split("\t") for line in cifar10_file.read_text().splitlines()]
    shuffled = [rows[i] for i in np.random.default_rng(7).permutation(len(rows))]
    variants = {
        "original": cifar10_file,
        "shuffled_crlf_bom": _rewritten(shuffled, tmp_path / "a", sep="  ", newline="\r\n", bom=b"\xef\xbb\xbf"),
        "reversed_no_final_newline": _rewritten(rows[::-1], tmp_path / "b", sep=" \t ", newline="\n",
                                                final_newline=False),
    }
    results = {}
    for name, path in variants.items():
        out = tmp_path / f"out_{name}"
        assert select_main(["--entropy-file", str(path), "--method", method, "--portion", "0.05", "--dataset",
                            "cifar10", "--out", str(out)]) == 0
        results[name] = _outputs(out)
    assert results["shuffled_crlf_bom"] == results["original"]
    assert results["reversed_no_final_newline"] == results["original"]


def test_select_and_search_share_one_default_seed():
    from proxynas_fast.search.cli_args import build_parser as search_parser
    from proxynas_fast.search.config import SearchConfig

    assert select_parser().parse_args([]).seed == DEFAULT_SEED == SearchConfig("cifar10", "x").seed
    assert f"default {DEFAULT_SEED}" in search_parser().format_help()


class _Labels:
    """The part of a data set the selection reads: its size and labels."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)


@pytest.mark.parametrize("method", ["p1", "p3"])
def test_select_equals_the_search_pipelines_own_selection(cifar10_file, tmp_path, method):
    import torch

    from proxynas_fast.entropy_file import read_entropy_file
    from proxynas_fast.search.config import resolve_config
    from proxynas_fast.search.distributed import DistContext
    from proxynas_fast.search.proxy_prep import select_and_write_proxy

    selected = tmp_path / "select"
    assert select_main(["--entropy-file", str(cifar10_file), "--method", method, "--dataset", "cifar10",
                        "--portion", "0.1", "--out", str(selected)]) == 0  # no --seed: the default
    searched = tmp_path / "search"
    config = resolve_config({"dataset": "cifar10", "out": str(searched), "entropy_file": str(cifar10_file),
                             "selection": method})  # no seed, no portion: search's defaults
    labels = read_entropy_file(cifar10_file).sorted_by_index().label
    split = select_and_write_proxy(config, _Labels(labels), searched, DistContext(0, 1, 0, torch.device("cpu")),
                              cifar10_file)
    assert len(split.selected) == 5000
    for name in PROXY_FILES.values():
        assert (searched / name).read_bytes() == (selected / name).read_bytes(), name
