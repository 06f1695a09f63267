"""Registry, request validation and the guarantees every selector gives (count, no duplicates, seeding)."""
import itertools

import numpy as np
import pytest
from scipy.stats import chisquare

from proxynas_fast.entropy_file import EntropyTable, read_entropy_file
from proxynas_fast.selection import (class_quotas, get_selector, list_selectors, register_selector,
                                     resolve_count, select, select_from_table,
                                     weighted_sample_without_replacement)
from proxynas_fast.selection.registry import SELECTORS

ALL_METHODS = ["forgetting", "high_entropy", "kcenter", "low_entropy", "p1", "p2", "p3", "random"]


@pytest.fixture(scope="module")
def cifar10(reference_entropy_dir):
    return read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")


def _method_options(method, n, seed=0):
    rng = np.random.default_rng(seed)
    if method == "kcenter":
        return {"features": rng.normal(size=(n, 8)).astype(np.float32)}
    if method == "forgetting":
        return {"forgetting_counts": np.where(rng.random(n) < 0.01, np.inf, rng.integers(0, 5, n))}
    return {}


def test_registry_lists_every_method():
    assert list_selectors() == ALL_METHODS
    for name in ALL_METHODS:
        assert get_selector(name).description
    assert get_selector("kcenter").required_options == ("features",)
    with pytest.raises(ValueError, match="unknown selection method 'p9'.*random"):
        select("p9", np.ones(10), count=2)


@pytest.fixture
def test_only_selectors():
    """Selectors a test registers (names ending in _test_only) are removed from the registry afterwards."""
    yield
    for name in [n for n in SELECTORS.names() if n.endswith("_test_only")]:
        SELECTORS.unregister(name)


def test_register_a_custom_selector(test_only_selectors):
    @register_selector("every_other_test_only")
    def every_other(entropy, count, rng, *, bin_width=None):
        """Takes every other example."""
        return np.arange(0, 2 * count, 2)

    assert "every_other_test_only" in list_selectors()
    assert get_selector("Every_Other_Test_Only").fn is every_other  # the function itself, any case
    assert get_selector("every_other_test_only").description == "Takes every other example."
    assert select("every_other_test_only", np.ones(10), count=3).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="already registered"):
        register_selector("every_other_test_only")(every_other)


def test_a_broken_selector_is_caught(test_only_selectors):
    @register_selector("duplicates_test_only")
    def duplicates(entropy, count, rng, *, bin_width=None):
        return np.zeros(count, dtype=np.int64)

    with pytest.raises(RuntimeError, match="1 distinct, wanted 3"):
        select("duplicates_test_only", np.ones(10), count=3)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_exact_count_no_duplicates_and_seeded(cifar10, method):
    n = 5000 if method == "kcenter" else len(cifar10)  # k-center on 5000 keeps the test quick
    entropy, labels = cifar10.entropy[:n], cifar10.label[:n]
    opts = _method_options(method, n)
    count = 100 if method == "kcenter" else 5003
    a = select(method, entropy, count=count, labels=labels, seed=3, dataset="cifar10", **opts)
    b = select(method, entropy, count=count, labels=labels, seed=3, dataset="cifar10", **opts)
    c = select(method, entropy, count=count, labels=labels, seed=4, dataset="cifar10", **opts)
    assert a.dtype == np.int64 and len(a) == count
    assert len(np.unique(a)) == count and np.all(np.diff(a) > 0)  # sorted, distinct
    assert a.min() >= 0 and a.max() < n
    assert np.array_equal(a, b)
    if method not in ("high_entropy", "low_entropy"):  # those are deterministic up to (absent) ties
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_class_balanced_takes_equal_shares(cifar10, method):
    n = 3000 if method == "kcenter" else len(cifar10)
    count = 53 if method == "kcenter" else 5003
    chosen = select(method, cifar10.entropy[:n], count=count, labels=cifar10.label[:n], seed=1,
                    dataset="cifar10", class_balanced=True, **_method_options(method, n))
    per_class = np.bincount(cifar10.label[chosen], minlength=10)
    base = count // 10
    assert per_class.tolist() == [base + 1] * (count % 10) + [base] * (10 - count % 10)
    assert len(np.unique(chosen)) == count


def test_class_quotas_and_their_errors():
    labels = np.array([5] * 4 + [2] * 10 + [9] * 10)
    assert class_quotas(labels, 8) == {2: 3, 5: 3, 9: 2}  # remainder to the lowest labels
    with pytest.raises(ValueError, match="class 5: wants 5, has 4"):
        class_quotas(labels, 15)
    with pytest.raises(ValueError, match="needs labels"):
        select("random", np.ones(24), count=3, class_balanced=True)


def test_histogram_methods_prefer_the_tails(cifar10):
    rand = select("random", cifar10.entropy, portion=0.1, seed=0)
    logs = np.log10(cifar10.entropy)
    mid = (logs > -4) & (logs < -2)  # the crowded middle of the CIFAR-10 histogram (27% of it)
    low_tail = logs < -10  # 4.5% of it
    assert abs(mid[rand].mean() - mid.mean()) < 0.03 and abs(low_tail[rand].mean() - low_tail.mean()) < 0.02
    # Measured at seed 0: middle share p1 1.0%, p2 15.6%, p3 7.5%; low-tail share p1 33%, p2 21%, p3 37%.
    for method, max_mid in (("p1", 0.03), ("p2", 0.2), ("p3", 0.1)):
        chosen = select(method, cifar10.entropy, portion=0.1, seed=0, dataset="cifar10")
        assert mid[chosen].mean() < max_mid
        assert low_tail[chosen].mean() > 0.15


def test_entropy_extremes(cifar10):
    order = np.argsort(cifar10.entropy)
    high = select("high_entropy", cifar10.entropy, count=500)
    low = select("low_entropy", cifar10.entropy, count=500)
    assert np.array_equal(high, np.sort(order[-500:]))
    assert np.array_equal(low, np.sort(order[:500]))


def test_ties_are_broken_by_seed():
    flat = np.full(20, 0.3)
    picks = {tuple(select("high_entropy", flat, count=5, seed=s)) for s in range(6)}
    assert len(picks) > 1
    assert np.array_equal(select("low_entropy", flat, count=5, seed=2), select("low_entropy", flat, count=5, seed=2))


def test_count_from_portion_and_rounding():
    assert resolve_count(50000, portion=0.1) == 5000
    assert resolve_count(100, portion=0.29) == 29  # 0.29 * 100 = 28.999999999999996 in floats
    assert resolve_count(1281167, portion=0.1) == 128116  # ImageNet: no rounding unless asked
    assert resolve_count(1281167, portion=0.1, round_to=1000) == 128000
    entropy = np.random.default_rng(0).random(12345) + 0.01
    assert len(select("p1", entropy, portion=0.1, dataset="imagenet")) == 1234
    assert len(select("p1", entropy, portion=0.1, dataset="imagenet", round_to=1000)) == 1000
    with pytest.raises(ValueError, match="multiple of 1000 leaves none"):
        select("random", entropy, count=999, round_to=1000)
    with pytest.raises(ValueError, match="round_to"):
        resolve_count(10, count=5, round_to=0)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"portion": 1.5}, r"portion must be in \(0, 1\], got 1.5"),
    ({"portion": 0.0}, r"portion must be in \(0, 1\], got 0.0"),
    ({"portion": -0.1}, r"got -0.1"),
    ({"portion": float("nan")}, r"got nan"),
    ({"portion": 0.001}, r"portion 0.001 of 100 examples selects nothing"),
    ({"count": 101}, r"count must be in 1..100 .*got 101"),
    ({"count": 0}, r"count must be in 1..100 .*got 0"),
    ({"count": 2.5}, r"integer"),
    ({"count": 10, "portion": 0.1}, r"either portion \(0.1\) or count \(10\)"),
    ({}, r"give a portion"),
    ({"count": 5, "labels": np.zeros(99, dtype=int)}, r"labels has 99 entries but entropy has 100"),
    ({"count": 5, "labels": np.zeros(100)}, r"labels must be integers"),
    ({"count": 5, "seed": -1}, r"seed must be a non-negative integer"),
    ({"count": 5, "bin_width": 0}, r"bin_width must be a finite number > 0"),
    ({"count": 5, "dataset": "mnist"}, r"unknown dataset 'mnist'"),
    ({"count": 5, "sharpness": 2}, r"unknown option\(s\) \['sharpness'\]"),
])
def test_bad_requests_raise_with_the_numbers(kwargs, pattern):
    entropy = np.linspace(0.01, 1.0, 100)
    kwargs.setdefault("dataset", "cifar10")
    with pytest.raises(ValueError, match=pattern):
        select("p1", entropy, **kwargs)


def test_bad_entropy_inputs_raise():
    with pytest.raises(ValueError, match="NaN value.*position.*\\[1\\]"):
        select("p2", np.array([0.1, np.nan, 0.3]), count=1, dataset="svhn")
    with pytest.raises(ValueError, match="negative"):
        select("random", np.array([0.1, -1e-9, 0.3]), count=1)
    with pytest.raises(ValueError, match="a bin width is needed"):
        select("p3", np.array([0.1, 0.2]), count=1)


def test_more_than_the_nonzero_probability_examples_raises():
    with pytest.raises(ValueError, match="cannot draw 3 examples.*only 2 of 4 have non-zero probability"):
        weighted_sample_without_replacement(np.array([0.0, 1.0, 0.0, 2.0]), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="count must be in 1..3"):
        select("p1", np.array([0.1, 0.2, 0.3]), count=4, dataset="cifar10")


def test_sampler_matches_successive_sampling_exactly():
    """Ordered pairs drawn by the exponential-key sampler follow P(i, j) = w_i/W * w_j/(W - w_i)."""
    w = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    pairs = list(itertools.permutations(range(5), 2))
    expected = np.array([w[i] / w.sum() * w[j] / (w.sum() - w[i]) for i, j in pairs])
    rng = np.random.default_rng(2024)
    draws = 12000
    seen = {}
    for _ in range(draws):
        i, j = weighted_sample_without_replacement(w, 2, rng)
        seen[(i, j)] = seen.get((i, j), 0) + 1
    observed = np.array([seen.get(p, 0) for p in pairs])
    assert observed.sum() == draws
    assert chisquare(observed, expected * draws).pvalue > 1e-3
    # Power check: the with-replacement-style model P(i, j) = p_i * p_j (renormalised) is rejected.
    naive = np.array([w[i] * w[j] for i, j in pairs])
    assert chisquare(observed, naive / naive.sum() * draws).pvalue < 1e-6


def test_select_from_table_returns_dataset_indices():
    entropy = np.array([0.5, 0.01, 0.2, 0.9, 0.05])
    table = EntropyTable(np.array([40, 10, 30, 0, 20]), entropy, np.array([1, 0, 1, 0, 1]))
    positions = select("high_entropy", entropy, count=2)
    assert positions.tolist() == [0, 3]
    assert select_from_table("high_entropy", table, count=2).tolist() == [40, 0]
    balanced = select_from_table("high_entropy", table, count=2, class_balanced=True)
    assert sorted(balanced.tolist()) == [0, 40]  # best of class 0 (idx 0) and class 1 (idx 40)
