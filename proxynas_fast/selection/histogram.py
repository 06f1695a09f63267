"""Histogram of log10(entropy): the bin grid every histogram-based selector and the summary share.

Bin convention (the one place it is defined; swap `bin_numbers` for a kernel later):

* Finite values v = log10(entropy) fall in half-open bins [k*w, (k+1)*w) anchored at multiples of the bin
  width w (edges computed as the float64 product k*w, so a value equal to an edge goes to the bin above it).
* The histogram spans [floor(min/w)*w, ceil(max/w)*w]; as with numpy.histogram, its top edge is included in
  the last bin: when the largest value sits exactly on an edge it joins the bin below, instead of opening a
  bin of its own. (A set whose values all sit on one edge gets the single bin [v, v+w).)
* Entropy 0 (log10 = -inf) gets a bin of its own below all finite bins, the "zero bin" (bin 0 when present).
  Such examples are the most confident ones there are, so they are treated as a tail of their own rather
  than merged with the lowest finite bin.

The batched op `proxynas_fast.ops.entropy_histogram` (the histogram a scoring run reports) uses the same
half-open bins at the same float64 edges k*w, but on a grid fixed before the data is seen (it sums the counts of
a stream of batches): entropy 0 shares its bin 0, values past its ends are clamped, and its last bin is half-open
like the others. The grid here is derived from all the values at once, which is what lets the selectors see
only bins holding data, and the entropy-0 examples as a tail of their own. The mapping between the two is
stated in `proxynas_fast/ops/entropy_histogram.py` and pinned on the paper's entropy lists by
tests/test_histogram_conventions.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

# Bin widths in log10 units used by the paper for each data set.
BIN_WIDTHS = {"cifar10": 0.5, "cifar100": 0.25, "svhn": 0.2, "imagenet": 0.25}
# The paper's histograms have ~30 bins. A width that cuts the data into more is a mistake (1e-5 would make
# millions, 1e-12 trillions: memory runs out); one whose bin numbers k = v / w pass 2**40 has edges k * w that
# no longer resolve the values (1e-300 overflows them outright).
MAX_BINS = 10_000
MAX_BIN_NUMBER = 2.0 ** 40


def resolve_bin_width(bin_width: Optional[float] = None, dataset: Optional[str] = None) -> float:
    """An explicit `bin_width` wins; otherwise the paper's width for `dataset`."""
    if bin_width is not None:
        try:
            width = float(bin_width)
        except (TypeError, ValueError):
            raise ValueError(f"bin_width must be a number, got {bin_width!r}") from None
        if not np.isfinite(width) or width <= 0:
            raise ValueError(f"bin_width must be a finite number > 0, got {bin_width!r}")
        return width
    if dataset is None:
        raise ValueError(
            f"a bin width is needed: pass bin_width=... or dataset= one of {sorted(BIN_WIDTHS)}")
    key = str(dataset).lower()
    if key not in BIN_WIDTHS:
        raise ValueError(
            f"unknown dataset {dataset!r} for the bin width; known: {sorted(BIN_WIDTHS)} (or pass bin_width=...)")
    return BIN_WIDTHS[key]


def check_entropy(entropy, name: str = "entropy") -> np.ndarray:
    """A 1-D float64 copy of `entropy`; raises ValueError for empty input, NaN, infinities or negatives."""
    try:
        values = np.asarray(entropy, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers") from None
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.size == 0:
        raise ValueError(f"{name} is empty")
    nan = np.flatnonzero(np.isnan(values))
    if nan.size:
        raise ValueError(f"{name} contains {nan.size} NaN value(s), first at position(s) {nan[:5].tolist()}")
    inf = np.flatnonzero(np.isinf(values))
    if inf.size:
        raise ValueError(f"{name} contains {inf.size} infinite value(s), first at position(s) {inf[:5].tolist()}")
    neg = np.flatnonzero(values < 0)
    if neg.size:
        raise ValueError(f"{name} contains {neg.size} negative value(s) (an entropy is >= 0), "
                         f"first at position(s) {neg[:5].tolist()}: {values[neg[:5]].tolist()}")
    return values


def check_bin_count(entropy, width: float) -> int:
    """The number of finite bins `log_entropy_histogram(entropy, width)` makes; a ValueError saying why and which
    width would do when that is more than MAX_BINS, or the width is too small for the values' magnitude."""
    values = np.asarray(entropy, dtype=np.float64)
    positive = values[values > 0]
    if positive.size == 0:
        return 0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        lo, hi = float(np.log10(positive.min())), float(np.log10(positive.max()))
        bins = np.floor(hi / width) - np.floor(lo / width) + 1
        largest = max(abs(lo), abs(hi)) / width
    if not (np.isfinite(bins) and bins <= MAX_BINS):
        shown = f"{bins:.3g}" if np.isfinite(bins) else "more than 1e308"
        raise ValueError(f"bin width {width:g} cuts log10(entropy), which spans {lo:.4g}..{hi:.4g}, into {shown} "
                         f"bins (at most {MAX_BINS}); use a width of at least {(hi - lo) / (MAX_BINS - 1):.3g} "
                         f"(the paper's: {', '.join(f'{k} {v}' for k, v in BIN_WIDTHS.items())})")
    if not largest <= MAX_BIN_NUMBER:
        raise ValueError(f"bin width {width:g} is too small for log10(entropy) values as large as "
                         f"{max(abs(lo), abs(hi)):.4g}: the bin edges would not resolve them; use a width of at least "
                         f"{max(abs(lo), abs(hi)) / MAX_BIN_NUMBER:.3g}")
    return int(bins)


def bin_numbers(log_values: np.ndarray, width: float) -> np.ndarray:
    """k with k*w <= v < (k+1)*w for each finite v, where the edges are the float64 products k*w.

    floor(v / w) alone can be off by one next to an edge (e.g. 0.6 / 0.2 < 3 while 3 * 0.2 > 0.6);
    the two corrections make the result agree exactly with the edge values.
    """
    v = np.asarray(log_values, dtype=np.float64)
    k = np.floor(v / width)
    k += (k + 1) * width <= v
    k -= k * width > v
    return k.astype(np.int64)


@dataclass(frozen=True)
class Binning:
    """Bin of each example plus the bin grid.

    bin_index: int64 [N], 0..num_bins-1. With a zero bin, bin 0 holds the entropy-0 examples and finite bin j
    is bin_index j+1. finite_edges: float64 [num_finite_bins + 1], contiguous edges in log10 units.
    """
    bin_index: np.ndarray
    counts: np.ndarray
    finite_edges: np.ndarray
    has_zero_bin: bool
    width: float

    @property
    def num_bins(self) -> int:
        return len(self.counts)

    def bounds(self, b: int) -> tuple[float, float]:
        """(lower, upper) of bin b in log10 units; the zero bin is (-inf, -inf)."""
        if self.has_zero_bin:
            if b == 0:
                return (-np.inf, -np.inf)
            b -= 1
        return (float(self.finite_edges[b]), float(self.finite_edges[b + 1]))

    def label(self, b: int) -> str:
        if self.has_zero_bin and b == 0:
            return "entropy=0"
        lo, hi = self.bounds(b)
        closing = "]" if b == self.num_bins - 1 else ")"
        return f"[{lo:.4g}, {hi:.4g}{closing}"


def log_entropy_histogram(entropy, width: float) -> Binning:
    """Bin examples by log10(entropy) with the convention in the module docstring."""
    values = check_entropy(entropy)
    if not np.isfinite(width) or width <= 0:
        raise ValueError(f"bin width must be a finite number > 0, got {width!r}")
    check_bin_count(values, width)
    zero = values == 0
    has_zero_bin = bool(zero.any())
    finite = ~zero
    bin_index = np.zeros(len(values), dtype=np.int64)
    if finite.any():
        logs = np.log10(values[finite])
        k = bin_numbers(logs, width)
        k_lo, k_max = int(k.min()), int(k.max())
        top_on_edge = k_max * width == logs.max()
        k_hi = k_max if (top_on_edge and k_max > k_lo) else k_max + 1  # exclusive upper bin number
        num_finite = k_hi - k_lo
        bin_index[finite] = np.minimum(k - k_lo, num_finite - 1) + int(has_zero_bin)
        finite_edges = np.arange(k_lo, k_hi + 1, dtype=np.float64) * width
    else:
        num_finite = 0
        finite_edges = np.zeros(0, dtype=np.float64)
    counts = np.bincount(bin_index, minlength=num_finite + int(has_zero_bin)).astype(np.int64)
    return Binning(bin_index, counts, finite_edges, has_zero_bin, float(width))
