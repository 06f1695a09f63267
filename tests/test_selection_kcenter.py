"""Greedy k-center: same picks as a plain float64 reference, chunking-independent, class-balanced slicing."""
import numpy as np
import pytest
import torch
from PIL import Image

from devices import needs_cuda
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.selection import greedy_k_center, select



def load_cifar10_pixels(cifar10_jpeg_dir, count):
    """First `count` CIFAR-10 training images (original order) as float32 [count, 3072] in [0, 1], labels."""
    rows = (cifar10_jpeg_dir / "train_order.txt").read_text().splitlines()[:count]
    pixels, labels = [], []
    for row in rows:
        _, rel, label = row.split("\t")
        with Image.open(cifar10_jpeg_dir / rel) as im:
            pixels.append(np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1) / 255.0)
        labels.append(int(label))
    return np.stack(pixels), np.array(labels)


def pairwise_distances(x):
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))


def reference_k_center(x, k, first):
    """Plain greedy k-center on the float64 distance matrix."""
    dist = pairwise_distances(x)
    picks = [first]
    nearest = dist[first].copy()
    for _ in range(k - 1):
        nearest[picks] = -1
        nxt = int(np.argmax(nearest))
        picks.append(nxt)
        nearest = np.minimum(nearest, dist[nxt])
    return np.array(picks)


@pytest.fixture(scope="module")
def pixels(cifar10_jpeg_dir):
    return load_cifar10_pixels(cifar10_jpeg_dir, 600)


def test_greedy_picks_match_a_float64_reference(pixels):
    x, _ = pixels
    expected = reference_k_center(x, 40, first=7)
    assert np.array_equal(greedy_k_center(x, 40, first=7, device="cpu"), expected)
    # Chunked updates (here 64 rows at a time) give the same picks as one pass.
    assert np.array_equal(greedy_k_center(x, 40, first=7, device="cpu", chunk_size=64), expected)
    assert np.array_equal(greedy_k_center(torch.from_numpy(x), 40, first=7, chunk_size=1000), expected)


def test_k_center_covers_better_than_random(pixels):
    x, _ = pixels
    dist = pairwise_distances(x)

    def radius(centers):
        return dist[:, centers].min(1).max()

    kc = greedy_k_center(x, 30, first=0, device="cpu")
    rand = np.random.default_rng(0).choice(len(x), 30, replace=False)
    assert radius(kc) < radius(rand)


def test_selector_uses_seeded_first_center_and_class_slices(pixels, reference_entropy_dir):
    x, labels = pixels
    table = read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")
    assert np.array_equal(labels, table.label[:600])  # the images line up with the entropy list
    entropy = table.entropy[:600]
    first = int(np.random.default_rng(5).integers(600))
    chosen = select("kcenter", entropy, count=25, seed=5, features=x, device="cpu")
    assert np.array_equal(chosen, np.sort(reference_k_center(x, 25, first)))

    balanced = select("kcenter", entropy, count=20, labels=labels, seed=5, features=x, device="cpu",
                      class_balanced=True)
    class_seeds = np.random.SeedSequence(5).spawn(10)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        start = int(np.random.default_rng(class_seeds[c]).integers(len(members)))
        expected = members[reference_k_center(x[members], 2, start)]
        assert np.array_equal(np.sort(balanced[labels[balanced] == c]), np.sort(expected))


def test_half_precision_features_are_accepted(pixels):
    x, _ = pixels
    picks = greedy_k_center(torch.from_numpy(x[:200]).to(torch.bfloat16), 10, first=3)
    assert len(np.unique(picks)) == 10 and picks[0] == 3


def test_duplicate_points_are_never_picked_twice():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 4 copies each
    picks = greedy_k_center(x, 12, first=0, device="cpu")
    assert sorted(picks.tolist()) == list(range(12))
    assert sorted(set(np.argmax(x[picks[:3]], axis=1).tolist())) == [0, 1, 2]  # distinct points first


def test_bad_features_raise():
    e = np.full(10, 0.1)
    with pytest.raises(ValueError, match=r"needs option\(s\) \['features'\]"):
        select("kcenter", e, count=2)
    with pytest.raises(ValueError, match="'features' has 9 rows but entropy has 10"):
        select("kcenter", e, count=2, features=np.zeros((9, 3)))
    bad = np.zeros((10, 3))
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        select("kcenter", e, count=2, features=bad)
    with pytest.raises(ValueError, match="2-D"):
        greedy_k_center(np.zeros(10), 2)
    with pytest.raises(ValueError, match="k=11, N=10"):
        greedy_k_center(np.zeros((10, 2)), 11)


@needs_cuda
def test_cuda_matches_cpu(pixels):
    x, _ = pixels
    cpu = greedy_k_center(x, 40, first=7, device="cpu")
    assert np.array_equal(greedy_k_center(x, 40, first=7, device="cuda", chunk_size=128), cpu)
