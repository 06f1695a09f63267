"""Split a proxy into the weight-training half and the architecture half, and write the proxy files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..entropy_file import write_entropy_file

PROXY_FILES = {"all": "proxy.txt", "weights": "proxy_weights.txt", "arch": "proxy_arch.txt"}
# The seed `select` and `search` use when none is given: one default, so that `select` then `search --proxy`
# trains on the examples `search` alone would select. 2 is DARTS's search seed, which `search` always used.
DEFAULT_SEED = 2


def split_proxy(positions, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weights, arch): a shuffle seeded by (seed, 1) puts floor(fraction * n) of `positions` in the weight
    half and the rest in the architecture half; both come back sorted."""
    positions = np.asarray(positions, dtype=np.int64)
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"split fraction must be a number, got {fraction!r}") from None
    if not (math.isfinite(fraction) and 0 < fraction < 1):
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n_weights = int(math.floor(fraction * len(positions) + 1e-9))
    if n_weights == 0 or n_weights == len(positions):
        raise ValueError(f"split fraction {fraction} of {len(positions)} examples leaves a half empty")
    shuffled = np.random.default_rng([seed, 1]).permutation(positions)
    return np.sort(shuffled[:n_weights]), np.sort(shuffled[n_weights:])


def write_proxy_files(out_dir, table, positions, *, fraction: float = 0.5, seed: int = 0) -> dict:
    """Write proxy.txt, proxy_weights.txt, proxy_arch.txt (`index entropy label` lines, sorted by data-set
    index) for the given positions into `table`; returns {"all"|"weights"|"arch": path}."""
    out_dir = Path(out_dir)
    weights, arch = split_proxy(positions, fraction, seed)
    paths = {}
    for key, part in (("all", np.asarray(positions, dtype=np.int64)), ("weights", weights), ("arch", arch)):
        order = part[np.argsort(table.index[part], kind="stable")]
        paths[key] = out_dir / PROXY_FILES[key]
        write_entropy_file(paths[key], table.index[order], table.entropy[order], table.label[order])
    return paths
