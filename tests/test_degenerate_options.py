"""Degenerate options are refused with the reason and the flag, before anything is written (issue 28, item 6):
a bin width that would make an absurd histogram (or underflows), a class balance that cannot give every class
its share, sizes that round to nothing or leave a half empty."""
from __future__ import annotations

import numpy as np
import pytest

from proxynas_fast.search.config import resolve_config
from proxynas_fast.search.errors import SearchError
from proxynas_fast.select import main as select_main
from proxynas_fast.selection import MAX_BINS, check_bin_count, log_entropy_histogram, select


@pytest.fixture(scope="module")
def small_file(reference_entropy_dir, tmp_path_factory):
    """The first 1,000 rows of the paper's CIFAR-10 list; class 3 cut down to 2 examples."""
    rows = (reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt").read_text().splitlines()[:1000]
    kept, threes = [], 0
    for row in rows:
        if row.split("\t")[2] == "3":
            threes += 1
            if threes > 2:
                continue
        kept.append(row)
    path = tmp_path_factory.mktemp("scores") / "small.txt"
    path.write_text("\n".join(kept) + "\n")
    return path


def _refused(args, tmp_path, capsys):
    out = tmp_path / "out"
    assert select_main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert not out.exists()  # refused before anything was written
    return err


@pytest.mark.parametrize("width", ["1e-300", "5e-324", "1e-12", "1e-5"])
def test_bin_width_making_an_absurd_histogram_is_refused(small_file, tmp_path, capsys, width):
    for method in ("p1", "random"):  # random bins only its summary: the width is still used
        err = _refused(["--entropy-file", str(small_file), "--method", method, "--portion", "0.1",
                        "--bin-width", width], tmp_path, capsys)
        assert err.startswith(f"error: --bin-width: bin width {float(width):g} cuts log10(entropy)")
        assert f"(at most {MAX_BINS}); use a width of at least 0.00141" in err


@pytest.mark.parametrize("width", ["0", "-1", "nan", "inf"])
def test_bin_width_not_a_positive_number_is_refused(small_file, tmp_path, capsys, width):
    err = _refused(["--entropy-file", str(small_file), "--portion", "0.1", "--bin-width", width], tmp_path, capsys)
    assert err.startswith("error: --bin-width must be a number > 0")


def test_library_refuses_the_histogram_too():
    values = np.array([1e-14, 0.5, 2.0])
    assert check_bin_count(values, 0.5) == log_entropy_histogram(values, 0.5).num_bins == 29
    with pytest.raises(ValueError, match=r"into 1\.43e\+13 bins \(at most 10000\)"):
        log_entropy_histogram(values, 1e-12)
    with pytest.raises(ValueError, match="bin width 1e-300 cuts"):
        select("p1", values, count=1, bin_width=1e-300)
    with pytest.raises(ValueError, match="too small for log10\\(entropy\\) values as large as 300"):
        log_entropy_histogram(np.array([1e-300, 1e-300]), 1e-12)  # one bin, edges k*w of k ~ 3e14


def test_class_balance_over_a_class_with_too_few_examples_is_refused(small_file, tmp_path, capsys):
    err = _refused(["--entropy-file", str(small_file), "--count", "100", "--bin-width", "0.5", "--class-balanced"],
                   tmp_path, capsys)
    assert err == ("error: --class-balanced with --count 100: class-balanced selection of 100 over 10 classes asks "
                   "more than some classes have (class 3: wants 10, has 2); select at most 20 or drop the class "
                   "balance\n")
    assert select_main(["--entropy-file", str(small_file), "--count", "20", "--bin-width", "0.5", "--class-balanced",
                        "--out", str(tmp_path / "ok")]) == 0


def test_class_balance_with_fewer_examples_than_classes_is_refused(small_file, tmp_path, capsys):
    # 5 over 10 classes used to give 5 classes one example each and the others none, silently.
    err = _refused(["--entropy-file", str(small_file), "--count", "5", "--bin-width", "0.5", "--class-balanced"],
                   tmp_path, capsys)
    assert err == ("error: --class-balanced with --count 5: class-balanced selection of 5 example(s) over 10 classes "
                   "leaves 5 class(es) without any; select at least 10\n")


@pytest.mark.parametrize("args, message", [
    (["--portion", "0.0001"], "portion 0.0001 of 910 examples selects nothing"),
    (["--count", "911"], "--count must be in 1..910"),
    (["--count", "10", "--round-to", "100"], "rounding 10 examples down to a multiple of 100 leaves none"),
    (["--count", "10", "--split-fraction", "0.01"], "split fraction 0.01 of 10 examples leaves a half empty"),
    (["--count", "1"], "split fraction 0.5 of 1 examples leaves a half empty"),
])
def test_sizes_that_round_to_nothing_are_refused(small_file, tmp_path, capsys, args, message):
    err = _refused(["--entropy-file", str(small_file), "--bin-width", "0.5", *args], tmp_path, capsys)
    assert message in err


@pytest.mark.parametrize("width", [0.0, -1.0, float("nan"), float("inf")])
def test_search_refuses_a_bin_width_that_is_not_a_positive_number(width):
    with pytest.raises(SearchError, match=r"^--bin-width: must be a finite number > 0"):
        resolve_config({"dataset": "cifar10", "out": "x", "entropy_file": "f", "bin_width": width})


def test_search_selection_refuses_an_absurd_histogram(small_file):
    from proxynas_fast.search.proxy_prep import select_proxy

    class Data:
        labels = np.zeros(50000, np.int64)

        def __len__(self):
            return 50000

    full = small_file.parent.parent / "full.txt"
    config = resolve_config({"dataset": "cifar10", "out": "x", "entropy_file": "f", "bin_width": 1e-300})
    table = np.loadtxt(small_file)
    rows = "".join(f"{i}\t{float(table[i % len(table), 1])!r}\t0\n" for i in range(50000))
    full.write_text(rows)
    with pytest.raises(SearchError, match=r"^proxy selection \(p1\): bin width 1e-300 cuts log10\(entropy\)"):
        select_proxy(config, Data(), full)
