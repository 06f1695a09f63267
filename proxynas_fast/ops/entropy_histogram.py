"""Batched softmax entropy + log10-entropy histogram in one pass (`proxynas_fast::entropy_histogram`).

Bin convention, and why it is not the selectors' (`proxynas_fast.selection.histogram`):

* Same grid: bins are half-open [k*w, (k+1)*w) over log10(entropy), with edges the float64 products k*w
  (`make_log10_edges`), exactly the edges of the selection histogram; a value on an edge goes to the bin above.
* Different frame, for one reason: this op histograms a stream. Scoring runs it batch by batch and sums the
  counts over batches and ranks before the range of the data is known, so the grid is fixed in advance
  (the scoring run uses [-46, 1], every log10 entropy float32 logits can give) and the output has one shape.
  Hence: an entropy of 0 (log10 = -inf) and anything below the first edge go to bin 0, anything at or above
  the last edge to the last bin (clamped ends). The selection histogram is built after the fact from all
  the values: its grid spans only the data, entropy 0 gets a "zero bin" of its own, and a largest value lying
  exactly on an edge joins the bin below (numpy.histogram's closed last bin).
* The mapping (pinned on the paper's entropy lists by tests/test_histogram_conventions.py): a selection finite
  bin j is op bin j + o, where o is the position of the selection's first finite edge among these edges; the
  selection's zero bin is op bin 0; a value on the selection's closed top edge is in the op bin above.
* Precision: the op bins the float64 entropy of each row, then returns it rounded to float32 (what an entropy
  file holds); an entropy within float32 rounding (1e-7 relative) of an edge could fall on the other side in
  a histogram of the file. None of the 173,257 examples of the paper's lists does (rescored by that test).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .. import extension

Tensor = torch.Tensor


def make_log10_edges(bin_width: float, lo: float, hi: float) -> Tensor:
    """Bin edges over log10(entropy) at multiples of `bin_width`, covering [lo, hi] (float64).

    Anchoring at multiples of the width makes bins identical across data subsets and runs.
    """
    if not (bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(f"bin width must be a positive number, got {bin_width}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"edge range must be finite with lo <= hi, got [{lo}, {hi}]")
    first = math.floor(lo / bin_width)
    last = max(math.floor(hi / bin_width) + 1, first + 1)
    return torch.arange(first, last + 1, dtype=torch.float64) * bin_width


def softmax_entropy_f64(x: Tensor) -> Tensor:
    """Entropy of softmax over the last dim in float64, accurate also for confident rows.

    With d = x - max, k = #(d == 0), rest = sum_{d<0} e^d, t = sum d e^d:
    H = log(k + rest) - t / (k + rest), with log(k + rest) = log k + log1p(rest / k). The textbook
    -sum p log p loses the max class's term (log of 1 + 1e-26 rounds to 0), which for a row with
    entropy ~1e-24 is a 2% error.
    """
    x = x.to(torch.float64)
    d = x - x.max(dim=-1, keepdim=True).values
    e = d.exp()
    k = (d == 0).sum(dim=-1).to(torch.float64)
    rest = torch.where(d < 0, e, torch.zeros_like(e)).sum(dim=-1)
    t = (d * e).sum(dim=-1)
    return (k.log() + torch.log1p(rest / k) - t / (k + rest)).clamp_min(0.0)


def entropy_histogram_reference(logits: Tensor, edges: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Pure-PyTorch float64 definition of the op (the ground truth of the tests and the fallback)."""
    _check_args(logits, edges)
    x = logits.detach().to(torch.float64)
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise RuntimeError(f"entropy_histogram: row {row} of the logits contains NaN or inf; "
                           "entropies are only defined for finite logits")
    entropy = softmax_entropy_f64(x)
    e = edges.to(device=x.device, dtype=torch.float64)
    num_bins = e.numel() - 1
    # bin i holds [e_i, e_{i+1}); log10(0) = -inf goes to bin 0, values past the ends are clamped.
    bins = (torch.searchsorted(e, torch.log10(entropy), right=True) - 1).clamp_(0, num_bins - 1)
    counts = torch.bincount(bins, minlength=num_bins)
    return entropy.to(torch.float32), bins, counts


def _check_args(logits: Tensor, edges: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"entropy_histogram: logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"entropy_histogram: logits must be floating point, got {logits.dtype}")
    if edges.dim() != 1 or edges.numel() < 2:
        raise ValueError(f"entropy_histogram: edges must be 1-D with >= 2 values, got shape {tuple(edges.shape)}")
    e = edges.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(e).all()) or not bool((e[1:] > e[:-1]).all()):
        raise ValueError("entropy_histogram: edges must be finite and strictly increasing")


def entropy_histogram(logits: Tensor, edges: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Entropy (nats, float32 [N]) of softmax(logits), the bin of each log10(entropy) (int64 [N]) and
    the bin counts (int64 [B]) for edges[B+1], in one pass over the logits.

    Bins are half-open [e_i, e_{i+1}); an entropy of exactly 0 (log10 = -inf) and anything below the first
    edge land in bin 0, anything at or above the last edge in the last bin. Rows holding NaN or inf raise.
    float16, bfloat16 and float32 logits use the compiled kernels (float64 logits, used for checking,
    go through the float64 reference).
    """
    _check_args(logits, edges)
    if logits.dtype == torch.float64 or not extension.use_compiled("entropy_histogram", logits.device):
        return entropy_histogram_reference(logits, edges)
    edges = edges.to(device=logits.device, dtype=torch.float64)
    return torch.ops.proxynas_fast.entropy_histogram(logits, edges)


if extension.has_cpu_kernels():

    @torch.library.register_fake("proxynas_fast::entropy_histogram")
    def _entropy_histogram_fake(logits, edges):
        n = logits.shape[0]
        return (logits.new_empty((n,), dtype=torch.float32), logits.new_empty((n,), dtype=torch.int64),
                logits.new_empty((edges.shape[0] - 1,), dtype=torch.int64))
