"""`<split>_order.txt` (index path label) must describe the class folders exactly: a missing line or a line
naming no image is an error naming the file (and line), not a silently dropped image or a bare [Errno 2]."""
from __future__ import annotations

import shutil

import pytest

from proxynas_fast.data import DatasetError, load_dataset


@pytest.fixture
def root(tmp_path, cifar10_jpeg_dir, monkeypatch):
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "c10"
    lines = []
    for label, c in enumerate(sorted(p.name for p in (cifar10_jpeg_dir / "train").iterdir())):
        (root / "train" / c).mkdir(parents=True)
        for i in range(2):
            shutil.copy(cifar10_jpeg_dir / "train" / c / f"{i:04d}.jpg", root / "train" / c / f"{i:04d}.jpg")
            lines.append(f"train/{c}/{i:04d}.jpg\t{label}")
    lines.reverse()  # an order other than the folders' own
    (root / "train_order.txt").write_text("".join(f"{n}\t{line}\n" for n, line in enumerate(lines)))
    return root


def test_complete_order_file_sets_the_order(root):
    data = load_dataset("cifar10", root, "train", download=False)
    assert len(data) == 20 and data.labels[0] == 9 and data.labels[-1] == 0


def test_missing_last_line_is_an_error(root):
    order = root / "train_order.txt"
    order.write_text("".join(order.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", root, "train", download=False)
    assert str(e.value) == (f"{order}: 19 lines for 20 images; 1 image(s) have no line, e.g. "
                            "train/airplane/0000.jpg (a line missing at the end?)")


def test_line_naming_a_missing_file_names_file_and_line(root):
    order = root / "train_order.txt"
    lines = order.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("0001.jpg", "0099.jpg")
    order.write_text("".join(lines))
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", root, "train", download=False)
    assert str(e.value).startswith(f"{order}:3: train/") and str(e.value).endswith("/0099.jpg: no such file")


def test_unreadable_order_file_is_named(root):
    order = root / "train_order.txt"
    order.unlink()
    order.mkdir()  # exists, but cannot be read as a file
    with pytest.raises(DatasetError, match=rf"^{order}: cannot read the order file \(Is a directory\)$"):
        load_dataset("cifar10", root, "train", download=False)


def test_byte_order_mark_is_accepted(root):
    # Editors on Windows save UTF-8 with a BOM; it is no part of the first index.
    order = root / "train_order.txt"
    order.write_bytes(b"\xef\xbb\xbf" + order.read_bytes())
    data = load_dataset("cifar10", root, "train", download=False)
    assert len(data) == 20 and data.labels[0] == 9


def test_path_listed_twice_names_both_lines(root):
    order = root / "train_order.txt"
    lines = order.read_text().splitlines(keepends=True)
    index, path, label = lines[4].split("\t")
    lines.append(f"20\t{path}\t{label}")  # one image twice: 21 lines for 20 images, none missing
    order.write_text("".join(lines))
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", root, "train", download=False)
    assert str(e.value) == f"{order}:21: {path} is also listed on line 5; each image needs exactly one line"


def test_order_file_not_utf8_names_the_line(root):
    order = root / "train_order.txt"
    lines = order.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b"train", b"tr\xffin")
    order.write_bytes(b"".join(lines))
    with pytest.raises(DatasetError, match=rf"^{order}:7: not UTF-8 text \(byte b'\\xff'\); save the order file "
                                           "as UTF-8$"):
        load_dataset("cifar10", root, "train", download=False)
