"""Random primitives shared by the selectors: weighted draws without replacement and seeded top-k."""
from __future__ import annotations

import numpy as np


def weighted_sample_without_replacement(weights, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw k distinct positions, successively, each draw proportional to the remaining weights.

    Same distribution as `rng.choice(n, k, replace=False, p=weights / weights.sum())`, in O(n) instead of
    numpy's O(n*k): Efraimidis-Spirakis keys E_i / w_i with E_i ~ Exp(1); the k smallest keys, in increasing
    order, are the successive draws (the smallest of independent exponentials with rates w_i is i with
    probability w_i / sum(w), and memorylessness makes the rest a draw from what remains).
    Zero weights are never drawn. Returns positions in draw order.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"weights must be 1-D, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    positive = int(np.count_nonzero(w))
    if k > positive:
        raise ValueError(f"cannot draw {k} examples without replacement: only {positive} of {len(w)} "
                         f"have non-zero probability")
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.full(len(w), np.inf)
    np.divide(rng.standard_exponential(len(w)), w, out=keys, where=w > 0)
    chosen = np.argpartition(keys, k - 1)[:k] if k < len(w) else np.arange(len(w))
    return chosen[np.argsort(keys[chosen], kind="stable")].astype(np.int64)


def top_k(scores, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the k largest scores (inf allowed), largest first; ties broken by a seeded shuffle."""
    s = np.asarray(scores, dtype=np.float64)
    if k > len(s):
        raise ValueError(f"cannot pick {k} examples out of {len(s)}")
    shuffled = rng.permutation(len(s))
    order = shuffled[np.argsort(-s[shuffled], kind="stable")]
    return order[:k].astype(np.int64)
