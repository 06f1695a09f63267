"""`select()`: validate the request, size it, optionally balance classes, and run a registered selector."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import numpy as np

from ._arrays import as_numpy, is_tensor
from .histogram import check_entropy, resolve_bin_width
from .registry import get_selector


def resolve_count(num_examples: int, portion=None, count=None, round_to: Optional[int] = None) -> int:
    """Number of examples to select: `count`, or floor(portion * N) (with 1e-9 slack against float error,
    so 0.1 * 50000 is 5000), then rounded down to a multiple of `round_to` when given (ImageNet uses 1000)."""
    if portion is not None and count is not None:
        raise ValueError(f"give either portion ({portion}) or count ({count}), not both")
    if portion is None and count is None:
        raise ValueError("give a portion (0 < portion <= 1) or a count of examples to select")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise ValueError(f"count must be an integer, got {count!r}")
        k = int(count)
        if not 0 < k <= num_examples:
            raise ValueError(f"count must be in 1..{num_examples} (the number of examples), got {k}")
    else:
        try:
            p = float(portion)
        except (TypeError, ValueError):
            raise ValueError(f"portion must be a number, got {portion!r}") from None
        if not (math.isfinite(p) and 0 < p <= 1):
            raise ValueError(f"portion must be in (0, 1], got {portion}")
        k = int(math.floor(p * num_examples + 1e-9))
        if k == 0:
            raise ValueError(f"portion {portion} of {num_examples} examples selects nothing")
    if round_to is not None:
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to <= 0:
            raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
        rounded = (k // int(round_to)) * int(round_to)
        if rounded == 0:
            raise ValueError(f"rounding {k} examples down to a multiple of {round_to} leaves none")
        k = rounded
    return k


def _check_labels(labels, n: int) -> np.ndarray:
    arr = as_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"labels has {len(arr)} entries but entropy has {n}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def class_quotas(labels: np.ndarray, count: int) -> dict:
    """Equal share per class (classes in ascending label order); the remainder goes one each to the
    lowest labels. Raises when there are fewer examples to select than classes (some class would get none) or a
    class has fewer examples than its share."""
    classes, available = np.unique(labels, return_counts=True)
    if count < len(classes):
        raise ValueError(f"class-balanced selection of {count} example(s) over {len(classes)} classes leaves "
                         f"{len(classes) - count} class(es) without any; select at least {len(classes)}")
    base, remainder = divmod(count, len(classes))
    quotas = {int(c): base + (1 if i < remainder else 0) for i, c in enumerate(classes)}
    short = [(int(c), quotas[int(c)], int(a)) for c, a in zip(classes, available) if quotas[int(c)] > a]
    if short:
        detail = ", ".join(f"class {c}: wants {q}, has {a}" for c, q, a in short[:5])
        raise ValueError(f"class-balanced selection of {count} over {len(classes)} classes asks more "
                         f"than some classes have ({detail}); select at most "
                         f"{len(classes) * int(available.min())} or drop the class balance")
    return quotas


def _subset(value, positions: np.ndarray):
    if is_tensor(value):
        import torch

        return value.index_select(0, torch.as_tensor(positions, device=value.device))
    return np.asarray(value)[positions]


def select(method: str, entropy, *, portion=None, count=None, labels=None, seed: int = 0,
           bin_width: Optional[float] = None, dataset: Optional[str] = None, **options) -> np.ndarray:
    """Select examples with a registered method; returns sorted int64 *positions* into `entropy`.

    Positions are 0..N-1 offsets into the arrays passed in, not data-set indices: with an EntropyTable use
    `select_from_table` (or `table.index[positions]`). Common options: class_balanced=True (needs labels;
    the method runs on each class with its own share, see `class_quotas`), round_to=M (round the count down
    to a multiple of M, e.g. 1000 for ImageNet as in the paper; never done implicitly).
    Method options: see `describe_selectors()`.
    """
    spec = get_selector(method)
    class_balanced = bool(options.pop("class_balanced", False))
    round_to = options.pop("round_to", None)
    spec.check_options(options)
    values = check_entropy(entropy)
    n = len(values)
    if labels is not None:
        labels = _check_labels(labels, n)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    k = resolve_count(n, portion=portion, count=count, round_to=round_to)
    width = None
    if spec.needs_bin_width or bin_width is not None or dataset is not None:
        width = resolve_bin_width(bin_width, dataset)
    for name in spec.per_example_options:
        value = options.get(name)
        if value is None:
            continue  # required options were checked above
        if not hasattr(value, "shape"):
            value = options[name] = np.asarray(value)
        if len(value.shape) == 0:
            raise ValueError(f"option {name!r} must be an array with one row per example, got a scalar")
        if value.shape[0] != n:
            raise ValueError(f"option {name!r} has {value.shape[0]} rows but entropy has {n} examples")

    if not class_balanced:
        chosen = spec.fn(values, k, np.random.default_rng(seed), bin_width=width, **options)
    else:
        if labels is None:
            raise ValueError("class_balanced=True needs labels")
        quotas = class_quotas(labels, k)
        class_seeds = np.random.SeedSequence(seed).spawn(len(quotas))
        parts = []
        for (label, quota), class_seed in zip(quotas.items(), class_seeds):
            members = np.flatnonzero(labels == label)
            if quota == 0:
                continue
            sub_options = {key: (_subset(val, members) if key in spec.per_example_options and val is not None
                                 else val) for key, val in options.items()}
            picked = spec.fn(values[members], quota, np.random.default_rng(class_seed), bin_width=width,
                             **sub_options)
            parts.append(members[np.asarray(picked, dtype=np.int64)])
        chosen = np.concatenate(parts)

    chosen = np.sort(np.asarray(chosen, dtype=np.int64))
    if len(chosen) != k or (k > 1 and np.any(np.diff(chosen) == 0)) or chosen[0] < 0 or chosen[-1] >= n:
        raise RuntimeError(f"selector {spec.name!r} returned an invalid selection "
                           f"({len(chosen)} positions, {len(np.unique(chosen))} distinct, wanted {k} of {n})")
    return chosen


def positions_to_indices(table, positions) -> np.ndarray:
    """Data-set indices (the table's `index` column) of the given positions."""
    return np.asarray(table.index)[np.asarray(positions, dtype=np.int64)]


def select_from_table(method: str, table, **kwargs) -> np.ndarray:
    """`select` on an EntropyTable (its entropy and, unless given, its labels); returns data-set indices."""
    kwargs.setdefault("labels", table.label)
    return positions_to_indices(table, select(method, table.entropy, **kwargs))
