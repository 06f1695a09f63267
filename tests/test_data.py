"""Data sets: every layout loads real images in the original order; bad input gives clear errors."""
import pickle
import shutil

import numpy as np
import pytest

from proxynas_fast.data import DatasetError, load_dataset, resolve_data_dir
from proxynas_fast.entropy_file import read_entropy_file


@pytest.fixture(scope="module")
def cifar10(cifar10_jpeg_dir):
    return load_dataset("cifar10", cifar10_jpeg_dir, "train")


def test_cifar10_jpeg_layout_follows_the_original_order(cifar10, reference_entropy_dir):
    assert cifar10.images.shape == (50000, 32, 32, 3) and cifar10.images.dtype == np.uint8
    assert cifar10.classes[:3] == ["airplane", "automobile", "bird"]
    # The paper's list is in the original CIFAR-10 order: its label column must equal ours.
    ref = read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")
    assert np.array_equal(ref.index, np.arange(50000))
    assert np.array_equal(ref.label, cifar10.labels)
    assert np.bincount(cifar10.labels).tolist() == [5000] * 10
    # pixels really are images: not constant, plausible mean
    assert 90 < cifar10.images[:1000].mean() < 160 and cifar10.images[:1000].std() > 40


def test_cifar10_test_split_and_subset(cifar10_jpeg_dir):
    test = load_dataset("cifar10", cifar10_jpeg_dir, "test")
    assert len(test) == 10000 and test.num_classes == 10
    sub = test.subset([5, 1, 9999])
    assert np.array_equal(sub.images[1], test.images[1]) and sub.labels[2] == test.labels[9999]


def test_pickle_layout_round_trip(tmp_path, cifar10):
    """torchvision's cifar-10-batches-py layout, written from real images, loads identically."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    per = 20
    rows = cifar10.images[: 5 * per].transpose(0, 3, 1, 2).reshape(5 * per, -1)
    for b in range(5):
        with open(root / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({"data": rows[b * per:(b + 1) * per], "labels": cifar10.labels[b * per:(b + 1) * per].tolist()}, f)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": rows[:per], "labels": cifar10.labels[:per].tolist()}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": cifar10.classes}, f)
    ds = load_dataset("cifar10", tmp_path, "train", download=False)
    assert np.array_equal(ds.images, cifar10.images[: 5 * per])
    assert np.array_equal(ds.labels, cifar10.labels[: 5 * per])
    assert len(load_dataset("cifar10", root, "test", download=False)) == per
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, "train", download=False)


def test_svhn_mat_layout(tmp_path, cifar10):
    from scipy.io import savemat

    x = cifar10.images[:30].transpose(1, 2, 3, 0)  # SVHN stores [32, 32, 3, N]
    y = (cifar10.labels[:30] % 10)
    y_svhn = np.where(y == 0, 10, y).reshape(-1, 1)  # digit 0 is label 10 in the .mat files
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y_svhn})
    ds = load_dataset("svhn", tmp_path, "train", download=False)
    assert np.array_equal(ds.images, cifar10.images[:30]) and np.array_equal(ds.labels, y)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", tmp_path, "test", download=False)


def test_imagenet_folder_layout(imagenet_sample_dir):
    ds = load_dataset("imagenet", imagenet_sample_dir, "train")
    assert len(ds) == 1000 and ds.num_classes == 1000
    assert ds.classes == sorted(ds.classes) and ds.files[0].endswith(".JPEG")
    assert np.array_equal(ds.labels, np.arange(1000))  # one image per class, sorted wnids


def test_corrupt_image_is_named(tmp_path, cifar10_jpeg_dir):
    root = tmp_path / "c10"
    for c in sorted(p.name for p in (cifar10_jpeg_dir / "test").iterdir()):
        (root / "test" / c).mkdir(parents=True)
        for name in ("0000.jpg", "0001.jpg"):
            shutil.copy(cifar10_jpeg_dir / "test" / c / name, root / "test" / c / name)
    bad = root / "test" / "cat" / "0001.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match=r"cat/0001\.jpg"):
        load_dataset("cifar10", root, "test", download=False)


def test_order_file_errors(tmp_path, cifar10_jpeg_dir):
    root = tmp_path / "c10"
    for c in sorted(p.name for p in (cifar10_jpeg_dir / "train").iterdir()):
        (root / "train" / c).mkdir(parents=True)
        shutil.copy(cifar10_jpeg_dir / "train" / c / "0000.jpg", root / "train" / c / "0000.jpg")
    (root / "train_order.txt").write_text("0\ttrain/cat/0000.jpg\t5\n")  # cat is class 3
    with pytest.raises(DatasetError, match="disagrees"):
        load_dataset("cifar10", root, "train", download=False)
    (root / "train_order.txt").write_text("0\ttrain/cat/0000.jpg\t3\n2\ttrain/dog/0000.jpg\t5\n")
    with pytest.raises(DatasetError, match="missing"):
        load_dataset("cifar10", root, "train", download=False)


def test_missing_and_unknown(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError, match="ImageNet folder layout"):
        load_dataset("imagenet", tmp_path)
    # No network here: the download attempt fails and the error says what to put where.
    monkeypatch.setattr("proxynas_fast.data.datasets._download",
                        lambda key, d: (_ for _ in ()).throw(OSError("network unreachable")))
    with pytest.raises(DatasetError, match="download failed: network unreachable.*cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("PROXYNAS_DATA", raising=False)
    assert str(resolve_data_dir(None)) == "data"
    monkeypatch.setenv("PROXYNAS_DATA", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert str(resolve_data_dir("x")) == "x"
