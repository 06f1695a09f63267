"""Argument helpers shared by the operator wrappers."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

IntPair = Union[int, Sequence[int]]


def int_pair(op: str, name: str, v: IntPair) -> Tuple[int, int]:
    """An int or 2 ints as a (height, width) pair; a clear error naming the op and the argument otherwise."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"{op}: {name} must be an int or 2 ints, got {v}")
    return v
