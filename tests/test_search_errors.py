"""Clear errors of the search pipeline on the real CIFAR-10 data: entropy files that disagree with the data set,
and proxies too small to give each half one batch."""
from __future__ import annotations

import numpy as np
import pytest

from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.search import SearchError
from proxynas_fast.search.__main__ import main
from proxynas_fast.search.proxy_prep import check_entropy_matches


@pytest.fixture(scope="module")
def cifar10(cifar10_jpeg_dir):
    from proxynas_fast.data import load_dataset

    return load_dataset("cifar10", cifar10_jpeg_dir, "train", download=False)


@pytest.fixture(scope="module")
def entropy_lines(reference_entropy_dir):
    return (reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt").read_text().splitlines()


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _mismatch(path, dataset):
    with pytest.raises(SearchError) as e:
        check_entropy_matches(read_entropy_file(path), dataset, "cifar10")
    return str(e.value)


def test_reference_file_matches(cifar10, reference_entropy_dir):
    table = check_entropy_matches(
        read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"), cifar10, "cifar10")
    assert np.array_equal(table.index, np.arange(50000)) and np.array_equal(table.label, cifar10.labels)


def test_length_and_index_mismatches_name_file_and_first_index(cifar10, entropy_lines, tmp_path):
    short = _write(tmp_path / "short.txt", entropy_lines[:49000])
    msg = _mismatch(short, cifar10)
    assert str(short) in msg and "has 49000 entries" in msg and "50000 examples" in msg
    assert "first mismatching index 49000" in msg

    holed = _write(tmp_path / "holed.txt", entropy_lines[:123] + entropy_lines[124:])
    msg = _mismatch(holed, cifar10)
    assert str(holed) in msg and "first mismatching index 123: index 123 is missing" in msg

    extra = _write(tmp_path / "extra.txt", entropy_lines + ["50000\t0.5\t3"])
    msg = _mismatch(extra, cifar10)
    assert "first mismatching index 50000: index 50000 is beyond the data set" in msg


def test_label_mismatch_names_file_and_first_index(cifar10, entropy_lines, tmp_path):
    lines = list(entropy_lines)
    for i in (7, 4000):
        idx, ent, label = lines[i].split("\t")
        lines[i] = f"{idx}\t{ent}\t{(int(label) + 1) % 10}"
    path = _write(tmp_path / "relabelled.txt", lines)
    msg = _mismatch(path, cifar10)
    assert str(path) in msg and "2 example(s)" in msg and "first mismatching index 7" in msg
    assert f"{int(cifar10.labels[7])} in the data set" in msg


def test_cli_reports_a_mismatched_entropy_file(cifar10_jpeg_dir, reference_entropy_dir, tmp_path, capsys):
    # cifar100's list has the same length but other labels: the classic wrong-file mistake.
    wrong = reference_entropy_dir / "cifar100_resnet56_index_entropy_class.txt"
    code = main(["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--entropy-file", str(wrong),
                 "--out", str(tmp_path / "o"), "--no-download"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: entropy file {wrong}" in err and "first mismatching index" in err
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


def test_cli_rejects_a_proxy_too_small_for_one_batch_per_half(cifar10_jpeg_dir, tmp_path, capsys):
    code = main(["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--selection", "random",
                 "--count", "20", "--batch-size", "16", "--out", str(tmp_path / "o"), "--no-download"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--count 20 selects 20 examples of cifar10 (10 for the weights, 10 for the architecture)" in err
    assert "--batch-size 16 on 1 process(es) each half needs at least 16 examples" in err
    code = main(["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--selection", "random",
                 "--portion", "0.0001", "--batch-size", "64", "--out", str(tmp_path / "p"), "--no-download"])
    assert code == 2 and "--portion 0.0001 selects 5 examples" in capsys.readouterr().err
