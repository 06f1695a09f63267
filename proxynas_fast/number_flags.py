"""Checks of numeric options shared by the CLIs: what is wrong with a value, in words, or None when it is fine.

Each CLI words its own error (`--flag: <problem>`) with its own exception type. NaN and infinity fail every
check: argparse's `type=float` takes "nan" and "inf", and either would train into a NaN network.
No torch here: the checks run before torch loads.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

# numpy's legacy seeding takes [0, 2**32 - 1]; python's and torch's take it too.
MAX_SEED = 2 ** 32 - 1
# Far above any network of the papers (DARTS evaluates 20 cells of 36 channels; ImageNet 14 x 48), far below
# sizes that exhaust memory before a step runs.
MAX_LAYERS = 100
MAX_INIT_CHANNELS = 1024
MAX_BATCH_SIZE = 65536
# The optimisers turn a rate into a float32 scalar for the weights (and fail with an overflow beyond it).
FLOAT32_MAX = 3.4028234663852886e38


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value) -> Optional[str]:
    """A finite number > 0 (learning rates, a gradient clip) that float32 holds."""
    if not (_finite(value) and value > 0):
        return f"must be a finite number > 0, got {value}"
    return None if value <= FLOAT32_MAX else f"{value} is beyond float32's range (at most {FLOAT32_MAX:.3g})"


def non_negative(value) -> Optional[str]:
    """A finite number >= 0 (weight decays)."""
    return None if _finite(value) and value >= 0 else f"must be a finite number >= 0, got {value}"


def unit_interval(value) -> Optional[str]:
    """A number in [0, 1) (momentum, Adam betas)."""
    return None if _finite(value) and 0 <= value < 1 else f"must be a number in [0, 1), got {value}"


def seed(value) -> Optional[str]:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED:
        return None
    return f"must be an integer in [0, {MAX_SEED}] (the range every random generator accepts), got {value}"


def at_most(value, limit: int, what: str) -> Optional[str]:
    """Sizes beyond `limit` (absurd for this search space: they exhaust memory before a step runs)."""
    return None if value <= limit else f"{value} is over the maximum of {limit} {what}"


SIZE_CAPS = (("layers", MAX_LAYERS, "cells"), ("init_channels", MAX_INIT_CHANNELS, "channels"),
             ("batch_size", MAX_BATCH_SIZE, "examples"))


def size_problems(config) -> Iterator[Tuple[str, str]]:
    """(field, problem) for each of the network and batch sizes of `config` (a search or train configuration)
    over its cap."""
    for name, limit, what in SIZE_CAPS:
        problem = at_most(getattr(config, name), limit, what)
        if problem:
            yield name, problem
