"""What a selection took: per-bin and per-class counts against what was available, and the data entropy.

"Data entropy" is the Shannon entropy (nats) of a set's distribution over the log10-entropy bins: high when
the set spreads over many bins (as the tail-preferring selections aim for), low when it piles into a few.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from ..entropy_file import atomic_write_text
from .histogram import log_entropy_histogram


def distribution_entropy(counts) -> float:
    """Shannon entropy in nats of the distribution given by non-negative counts."""
    c = np.asarray(counts, dtype=np.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def summarize_selection(entropy, labels, positions, bin_width: float, **info) -> dict:
    """Summary dict (JSON-ready). `info` (method, seed, ...) is stored under "config"."""
    binning = log_entropy_histogram(entropy, bin_width)
    entropy = np.asarray(entropy, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    selected_bins = np.bincount(binning.bin_index[positions], minlength=binning.num_bins)
    bins = []
    for b in range(binning.num_bins):
        lo, hi = binning.bounds(b)
        available, taken = int(binning.counts[b]), int(selected_bins[b])
        bins.append({"bin": b, "label": binning.label(b), "lower_log10": _finite_or_none(lo),
                     "upper_log10": _finite_or_none(hi), "available": available, "selected": taken,
                     "rate": taken / available if available else 0.0})
    classes = []
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        values, available = np.unique(labels, return_counts=True)
        taken = {int(c): int(n) for c, n in zip(*np.unique(labels[positions], return_counts=True))}
        classes = [{"label": int(c), "available": int(a), "selected": taken.get(int(c), 0)}
                   for c, a in zip(values, available)]
    occupied = int(np.count_nonzero(binning.counts))
    return {
        "config": info,
        "num_examples": int(len(entropy)),
        "num_selected": int(len(positions)),
        "portion": len(positions) / len(entropy),
        "bin_width": binning.width,
        "has_zero_bin": binning.has_zero_bin,
        "data_entropy_nats": {
            "full": distribution_entropy(binning.counts),
            "selected": distribution_entropy(selected_bins),
            "max_possible": float(np.log(occupied)) if occupied else 0.0,
        },
        "mean_entropy_nats": {"full": float(entropy.mean()), "selected": float(entropy[positions].mean())},
        "bins": bins,
        "classes": classes,
    }


def format_summary(summary: dict) -> str:
    """Human-readable text version of `summarize_selection`'s dict."""
    de, me = summary["data_entropy_nats"], summary["mean_entropy_nats"]
    cfg = ", ".join(f"{k}={v}" for k, v in summary["config"].items())
    lines = [
        f"selection: {cfg}",
        f"selected {summary['num_selected']} of {summary['num_examples']} examples "
        f"({100 * summary['portion']:.2f}%), log10 bin width {summary['bin_width']}",
        f"data entropy (nats, over bins): selected {de['selected']:.4f} vs full {de['full']:.4f} "
        f"(max {de['max_possible']:.4f})",
        f"mean example entropy (nats): selected {me['selected']:.4g} vs full {me['full']:.4g}",
        "",
        f"{'bin':>4}  {'log10(entropy)':<18}{'available':>10}{'selected':>10}{'rate':>9}",
    ]
    for b in summary["bins"]:
        lines.append(f"{b['bin']:>4}  {b['label']:<18}{b['available']:>10}{b['selected']:>10}"
                     f"{100 * b['rate']:>8.2f}%")
    if summary["classes"]:
        lines += ["", f"{'class':>6}{'available':>10}{'selected':>10}"]
        lines += [f"{c['label']:>6}{c['available']:>10}{c['selected']:>10}" for c in summary["classes"]]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, json_path, text_path) -> None:
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(text_path, format_summary(summary))
