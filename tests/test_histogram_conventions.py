"""The two log10-entropy histograms agree after the stated mapping (issue 16 item 5), on the paper's entropy lists.

The scoring run's histogram comes from the batched op (`proxynas_fast.ops.entropy_histogram`, a fixed grid
summed over batches); the selectors bin the entropy file that run writes (`proxynas_fast.selection.histogram`,
a grid derived from the data). Each list is rescored through the real scoring code: every example becomes a
row of float32 logits whose softmax entropy is its entropy in the list, plus one confident row (entropy 0).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.ops import entropy_histogram
from proxynas_fast.scoring import score_examples
from proxynas_fast.selection import BIN_WIDTHS, log_entropy_histogram

LISTS = [("cifar10", "cifar10_resnet20", 10), ("cifar100", "cifar100_resnet56", 100), ("svhn", "svhn_resnet20", 10)]


def entropy_of_gap(gap: np.ndarray, classes: int) -> np.ndarray:
    """Entropy (nats) of softmax([0, -gap, ..., -gap]) with `classes` entries: log C at gap 0, falling to 0."""
    q = (classes - 1) * np.exp(-gap)
    return np.log1p(q) + gap * q / (1 + q)


def logits_with_entropy(entropy: np.ndarray, classes: int) -> torch.Tensor:
    """float32 rows [0, -gap, ...] whose softmax entropy is `entropy` (gap found by bisection), then a one-hot
    row (gap 200: every other probability underflows, entropy exactly 0)."""
    lo, hi = np.zeros_like(entropy), np.full_like(entropy, 80.0)
    for _ in range(80):
        mid = (lo + hi) / 2
        above = entropy_of_gap(mid, classes) > entropy
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    gaps = np.append((lo + hi) / 2, 200.0)
    rows = np.zeros((len(gaps), classes), np.float32)
    rows[:, 1:] = -gaps[:, None]
    return torch.from_numpy(rows)


def op_bins_of(binning, entropy: np.ndarray, op_edges: np.ndarray) -> np.ndarray:
    """The mapping of the module docstrings: selection bin -> op bin, per example."""
    offset = np.flatnonzero(op_edges == binning.finite_edges[0])
    assert offset.size == 1, "the selection's edges are not op edges: the grids differ"
    finite = binning.bin_index - int(binning.has_zero_bin)
    mapped = offset[0] + finite
    with np.errstate(divide="ignore"):
        on_closed_top = np.log10(entropy) == binning.finite_edges[-1]
    mapped[on_closed_top] += 1  # the selection's last bin is closed, the op's half-open
    zero = entropy == 0
    mapped[zero] = 0  # the selection's zero bin; the op's bin 0 (log10 0 = -inf, clamped)
    return mapped


@pytest.mark.parametrize("dataset,name,classes", LISTS, ids=[d for d, _, _ in LISTS])
def test_scored_histogram_equals_selection_histogram_after_mapping(reference_entropy_dir, single_thread, dataset,
                                                                   name, classes):
    table = read_entropy_file(reference_entropy_dir / f"{name}_index_entropy_class.txt")
    logits = logits_with_entropy(table.entropy, classes)
    width = BIN_WIDTHS[dataset]
    scored = score_examples(nn.Identity(), logits.split(4096), num_examples=len(logits),
                            labels=np.append(table.label, 0), device="cpu", bin_width=width)
    # The rescored entropies are the list's (float32 reductions: a few 1e-6 relative), and the one-hot row is 0.
    np.testing.assert_allclose(scored.entropy[:-1], table.entropy, rtol=1e-5)
    assert scored.entropy[-1] == 0.0

    binning = log_entropy_histogram(scored.entropy, width)  # what a selector sees in the file scoring wrote
    assert binning.has_zero_bin and binning.counts[0] == 1
    _, op_bins, op_counts = entropy_histogram(logits, torch.from_numpy(scored.bin_edges))
    mapped = op_bins_of(binning, scored.entropy, scored.bin_edges)
    mismatch = np.flatnonzero(op_bins.numpy() != mapped)
    assert mismatch.size == 0, f"{mismatch.size} examples binned differently, first {mismatch[:5]}"
    # Counts: the scoring run's histogram is the selection's, moved by the offset, with the zero bin in bin 0.
    expected = np.bincount(mapped, minlength=len(scored.bin_counts))
    np.testing.assert_array_equal(scored.bin_counts, expected)
    np.testing.assert_array_equal(op_counts.numpy(), expected)
    finite = binning.counts[1:]
    offset = int(np.flatnonzero(scored.bin_edges == binning.finite_edges[0])[0])
    np.testing.assert_array_equal(scored.bin_counts[offset:offset + len(finite)], finite)
    assert scored.bin_counts[0] == 1 and scored.bin_counts.sum() == binning.counts.sum() == len(logits)
