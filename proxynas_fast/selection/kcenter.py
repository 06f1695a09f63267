"""Greedy k-center (Sener & Savarese's core-set) on the scorer's penultimate features, in torch.

Each step adds the example farthest (Euclidean) from the centers chosen so far and lowers every example's
distance-to-nearest-center with the new center. The update is a matrix-vector product done in row chunks,
so temporary memory stays at `chunk_size` floats whatever N is; the loop keeps the current center on the
device (no host sync per step). For ImageNet (1.28M x 2048 float32 = 10.5 GB) the features fit on one GPU;
a step then reads the features once, so k steps cost k passes over them.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from .registry import register_selector


def _as_feature_tensor(features, device: "torch.device") -> "torch.Tensor":
    import torch

    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(features))
    if x.dim() != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x) or x.dtype == torch.float64:
        x = x.to(torch.float32)
    return x.to(device)


def greedy_k_center(features, k: int, *, first: int = 0, device: Union[str, "torch.device", None] = None,
                    chunk_size: int = 65536) -> np.ndarray:
    """Positions of k centers in pick order, starting from position `first`.

    features: [N, D] numpy array or tensor; float16/bfloat16 stay in that dtype for the products, anything
    else becomes float32; distances are float32. device: where to compute (default: the tensor's device, else cuda
    when available, else cpu).
    """
    import torch  # imported here so entropy-only selection never loads torch

    if device is None:
        if isinstance(features, torch.Tensor):
            device = features.device
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    x = _as_feature_tensor(features, device)
    n = x.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"k-center needs 0 < k <= N, got k={k}, N={n}")
    if not 0 <= first < n:
        raise ValueError(f"first center {first} is outside 0..{n - 1}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")

    sq_norm = torch.empty(n, dtype=torch.float32, device=device)
    for s in range(0, n, chunk_size):
        sq_norm[s:s + chunk_size] = x[s:s + chunk_size].float().pow(2).sum(1)
    if not bool(torch.isfinite(sq_norm).all()):  # a NaN or infinite feature makes its row's norm non-finite
        raise ValueError("features contain NaN or infinite values")
    min_dist = torch.full((n,), float("inf"), dtype=torch.float32, device=device)
    chosen = torch.empty(k, dtype=torch.long, device=device)
    current = torch.tensor(first, dtype=torch.long, device=device)
    for step in range(k):
        chosen[step] = current
        center = x.index_select(0, current.view(1)).squeeze(0)
        center_sq = sq_norm.index_select(0, current.view(1))
        for s in range(0, n, chunk_size):
            block = x[s:s + chunk_size]
            dist = (sq_norm[s:s + chunk_size] + center_sq) - 2.0 * (block @ center).float()
            torch.minimum(min_dist[s:s + chunk_size], dist.clamp_(min=0.0), out=min_dist[s:s + chunk_size])
        # A chosen example keeps -1 (below any distance) so it never wins again; float rounding could
        # otherwise leave it a tiny positive distance to itself.
        min_dist.index_fill_(0, current.view(1), -1.0)
        current = torch.argmax(min_dist)
    return chosen.cpu().numpy().astype(np.int64)


@register_selector(
    "kcenter",
    options={
        "features": "array [N, D] (numpy or torch) of the scorer's penultimate features, row i = example i",
        "device": "torch device for the distance updates (default: the tensor's device, else cuda if available)",
        "chunk_size": "rows per distance-update chunk (default 65536); bounds temporary memory",
    },
    per_example_options=("features",),
    required_options=("features",),
)
def select_kcenter(entropy, count, rng, *, bin_width=None, features=None, device=None, chunk_size=65536):
    """Greedy k-center core-set on penultimate features; the first center is drawn by the seed."""
    if len(features) != len(entropy):
        raise ValueError(f"features has {len(features)} rows but there are {len(entropy)} examples")
    first = int(rng.integers(len(entropy)))
    return greedy_k_center(features, count, first=first, device=device, chunk_size=int(chunk_size))
