"""Entropy-based selectors: random, the paper's histogram selections P1/P2/P3, and the entropy extremes."""
from __future__ import annotations

import numpy as np

from .histogram import log_entropy_histogram
from .registry import register_selector
from .sampling import top_k, weighted_sample_without_replacement

HISTOGRAM_SCHEMES = ("p1", "p2", "p3")


def histogram_bin_weights(counts: np.ndarray, scheme: str) -> np.ndarray:
    """Weight of each bin: P1 max_count - count + 1, P2 1, P3 1/count; empty bins weigh 0."""
    counts = np.asarray(counts, dtype=np.float64)
    occupied = counts > 0
    if scheme == "p1":
        return np.where(occupied, counts.max() - counts + 1.0, 0.0)
    if scheme == "p2":
        return occupied.astype(np.float64)
    if scheme == "p3":
        return np.where(occupied, 1.0 / np.maximum(counts, 1.0), 0.0)
    raise ValueError(f"unknown histogram scheme {scheme!r}; expected one of {HISTOGRAM_SCHEMES}")


def example_probabilities(entropy, scheme: str, bin_width: float) -> np.ndarray:
    """Per-example probability of the first draw: bin weight shared evenly by the bin's examples, normalised."""
    binning = log_entropy_histogram(entropy, bin_width)
    bin_weights = histogram_bin_weights(binning.counts, scheme)
    per_example = bin_weights[binning.bin_index] / binning.counts[binning.bin_index]
    return per_example / per_example.sum()


def _histogram_select(scheme, entropy, count, rng, bin_width):
    return weighted_sample_without_replacement(example_probabilities(entropy, scheme, bin_width), count, rng)


@register_selector("random")
def select_random(entropy, count, rng, *, bin_width=None):
    """Uniform draw without replacement (the paper's baseline)."""
    return rng.permutation(len(entropy))[:count].astype(np.int64)


@register_selector("p1", needs_bin_width=True)
def select_p1(entropy, count, rng, *, bin_width):
    """Paper's P1: histogram over log10(entropy), bin weight max_count - count + 1 (strongly prefers rare bins)."""
    return _histogram_select("p1", entropy, count, rng, bin_width)


@register_selector("p2", needs_bin_width=True)
def select_p2(entropy, count, rng, *, bin_width):
    """Paper's P2: histogram over log10(entropy), every occupied bin weighs the same."""
    return _histogram_select("p2", entropy, count, rng, bin_width)


@register_selector("p3", needs_bin_width=True)
def select_p3(entropy, count, rng, *, bin_width):
    """Paper's P3: histogram over log10(entropy), bin weight 1/count."""
    return _histogram_select("p3", entropy, count, rng, bin_width)


@register_selector("high_entropy")
def select_high_entropy(entropy, count, rng, *, bin_width=None):
    """The `count` highest-entropy examples (ties broken by seed)."""
    return top_k(entropy, count, rng)


@register_selector("low_entropy")
def select_low_entropy(entropy, count, rng, *, bin_width=None):
    """The `count` lowest-entropy examples (ties broken by seed)."""
    return top_k(-np.asarray(entropy), count, rng)
