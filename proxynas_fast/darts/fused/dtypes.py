"""Dtype helpers of the fused cell: casts that skip the call when nothing changes, and the dtypes sums use."""
from __future__ import annotations

from typing import Sequence

import torch

Tensor = torch.Tensor


def cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """`t.to(dtype)` without the call when it would return `t` (a step makes hundreds of these)."""
    return t if t.dtype == dtype else t.to(dtype)


def common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """The dtype all `tensors` promote to."""
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop()
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    return dtype


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and weighted sums accumulate in: float64 for float64 inputs, else float32 (bfloat16
    under autocast accumulates in float32, as the reference's BatchNorm does)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
