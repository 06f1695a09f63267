"""Bin convention of the log10-entropy histogram: edges, the top edge, entropy 0, bad values."""
import numpy as np
import pytest

from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.selection import (BIN_WIDTHS, bin_numbers, example_probabilities, histogram_bin_weights,
                                     log_entropy_histogram, resolve_bin_width, select)


@pytest.mark.parametrize("width", [0.5, 0.25, 0.2, 0.1, 0.3])
def test_values_on_an_edge_open_the_bin_above(width):
    k = np.arange(-120, 121)
    edges = k * width  # the float64 edges the convention is defined by
    assert np.array_equal(bin_numbers(edges, width), k)
    just_below = np.nextafter(edges, -np.inf)
    assert np.array_equal(bin_numbers(just_below, width), k - 1)
    assert np.array_equal(bin_numbers(edges + width / 2, width), k)


def test_float_division_next_to_an_edge():
    # 0.6 / 0.2 = 2.9999999999999996 but the edge 3 * 0.2 = 0.6000000000000001 > 0.6: bin 2 is right.
    assert bin_numbers(np.array([0.6]), 0.2)[0] == 2
    assert bin_numbers(np.array([3 * 0.2]), 0.2)[0] == 3
    # -1 / 0.2 rounds to exactly -5.0 and -5 * 0.2 == -1.0: bin -5.
    assert bin_numbers(np.array([-1.0]), 0.2)[0] == -5


def test_entropies_on_edges_and_the_top_edge_in_the_last_bin():
    # log10: -2, -1.5 (approx), -1, -0.3, 0 (max, exactly on an edge)
    entropy = np.array([0.01, 10 ** -1.5, 0.1, 0.5, 1.0])
    assert np.log10(0.01) == -2.0 and np.log10(0.1) == -1.0 and np.log10(1.0) == 0.0
    b = log_entropy_histogram(entropy, 0.5)
    assert b.finite_edges.tolist() == [-2.0, -1.5, -1.0, -0.5, 0.0]
    assert not b.has_zero_bin
    # 0.01 -> [-2,-1.5); 0.1 -> [-1,-0.5) (edge goes up); 1.0 (top edge) -> last bin [-0.5, 0]
    assert b.bin_index[[0, 2, 3, 4]].tolist() == [0, 2, 3, 3]
    assert b.counts.sum() == 5 and b.num_bins == 4
    assert b.label(3) == "[-0.5, 0]" and b.label(0) == "[-2, -1.5)"


def test_top_value_off_an_edge_gets_a_normal_bin():
    b = log_entropy_histogram(np.array([0.01, 2.0]), 0.5)  # log10(2) = 0.301 -> [0, 0.5)
    assert b.finite_edges.tolist() == [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5]
    assert b.bin_index.tolist() == [0, 4]


def test_all_values_on_one_edge_make_one_bin_above_it():
    b = log_entropy_histogram(np.array([0.1, 0.1, 0.1]), 0.5)
    assert b.finite_edges.tolist() == [-1.0, -0.5]
    assert b.counts.tolist() == [3]


def test_zero_entropy_gets_its_own_lowest_bin():
    entropy = np.array([0.0, 1e-3, 0.0, 0.2, 1e-3])
    b = log_entropy_histogram(entropy, 0.5)
    assert b.has_zero_bin
    assert b.bin_index[[0, 2]].tolist() == [0, 0]  # the zero bin is bin 0
    assert b.bounds(0) == (-np.inf, -np.inf) and b.label(0) == "entropy=0"
    assert b.bin_index[[1, 3, 4]].tolist() == [1, 5, 1]  # -3 -> first finite bin, log10(0.2)=-0.7 -> [-1,-0.5)
    assert b.counts.tolist() == [2, 2, 0, 0, 0, 1]
    # P1: max count 2 -> zero bin weighs 2-2+1 = 1 shared by two examples; the singleton bin weighs 2.
    p = example_probabilities(entropy, "p1", 0.5)
    assert np.allclose(p, np.array([0.5, 0.5, 0.5, 2.0, 0.5]) / 4.0)
    chosen = select("p1", entropy, count=5, bin_width=0.5)
    assert chosen.tolist() == [0, 1, 2, 3, 4]


def test_all_zero_entropy_is_a_single_zero_bin():
    b = log_entropy_histogram(np.zeros(4), 0.25)
    assert b.has_zero_bin and b.counts.tolist() == [4] and len(b.finite_edges) == 0
    assert len(select("p3", np.zeros(4), count=2, bin_width=0.25, seed=1)) == 2


def test_bin_weights_by_scheme():
    counts = np.array([3, 1, 0, 2])
    assert histogram_bin_weights(counts, "p1").tolist() == [1, 3, 0, 2]
    assert histogram_bin_weights(counts, "p2").tolist() == [1, 1, 0, 1]
    assert np.allclose(histogram_bin_weights(counts, "p3"), [1 / 3, 1, 0, 1 / 2])
    with pytest.raises(ValueError, match="p4"):
        histogram_bin_weights(counts, "p4")


def test_example_probability_is_bin_weight_shared_by_its_examples():
    entropy = np.array([0.01, 0.011, 0.012, 0.1, 1e-5, 1e-5])  # bins [-2,-1.5):3, [-1.5,-1] (top edge):1, [-5,-4.5):2
    b = log_entropy_histogram(entropy, 0.5)
    assert sorted(b.counts[b.counts > 0].tolist()) == [1, 2, 3]
    p1 = example_probabilities(entropy, "p1", 0.5)  # weights: 3-bin 1, 1-bin 3, 2-bin 2
    assert np.allclose(p1, np.array([1 / 3, 1 / 3, 1 / 3, 3, 1, 1]) / 6)
    p2 = example_probabilities(entropy, "p2", 0.5)
    assert np.allclose(p2, np.array([1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6]))
    p3 = example_probabilities(entropy, "p3", 0.5)
    w = np.array([1 / 9, 1 / 9, 1 / 9, 1, 1 / 4, 1 / 4])
    assert np.allclose(p3, w / w.sum())


@pytest.mark.parametrize("name,width", [("cifar10_resnet20", 0.5), ("cifar100_resnet56", 0.25),
                                        ("svhn_resnet20", 0.2)])
def test_counts_agree_with_numpy_histogram_on_reference_lists(reference_entropy_dir, name, width):
    table = read_entropy_file(reference_entropy_dir / f"{name}_index_entropy_class.txt")
    b = log_entropy_histogram(table.entropy, width)
    assert not b.has_zero_bin
    counts, _ = np.histogram(np.log10(table.entropy), bins=b.finite_edges)
    assert np.array_equal(counts, b.counts)
    assert np.all(np.abs(b.finite_edges / width - np.round(b.finite_edges / width)) < 1e-9)  # anchored


def test_bad_entropies_raise():
    with pytest.raises(ValueError, match="NaN.*position"):
        log_entropy_histogram(np.array([0.1, np.nan, 0.2]), 0.5)
    with pytest.raises(ValueError, match="negative.*-0.5"):
        log_entropy_histogram(np.array([0.1, -0.5]), 0.5)
    with pytest.raises(ValueError, match="infinite"):
        log_entropy_histogram(np.array([0.1, np.inf]), 0.5)
    with pytest.raises(ValueError, match="empty"):
        log_entropy_histogram(np.array([]), 0.5)
    with pytest.raises(ValueError, match="1-D"):
        log_entropy_histogram(np.ones((2, 2)), 0.5)


def test_bin_width_resolution():
    assert BIN_WIDTHS == {"cifar10": 0.5, "cifar100": 0.25, "svhn": 0.2, "imagenet": 0.25}
    assert resolve_bin_width(dataset="SVHN") == 0.2
    assert resolve_bin_width(0.1, dataset="cifar10") == 0.1
    with pytest.raises(ValueError, match="mnist"):
        resolve_bin_width(dataset="mnist")
    with pytest.raises(ValueError, match="bin_width"):
        resolve_bin_width()
    for bad in (0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bin_width"):
            resolve_bin_width(bad)
