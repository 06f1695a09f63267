"""Output layout of the compiled kernels, for their fake (meta) implementations.

The kernels compute in NCHW and return their result in channels_last when the input's suggested memory format is
channels_last (`at::Tensor::suggest_memory_format`), else contiguous; a fake kernel must report the same strides.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch._prims_common import suggest_memory_format

Tensor = torch.Tensor


def empty_in_layout_of(input: Tensor, shape: Sequence[int], dtype: torch.dtype = None) -> Tensor:
    """An empty [N, C, H, W] tensor with the strides the kernels give an output computed from `input`."""
    out = input.new_empty(tuple(shape), dtype=dtype or input.dtype)
    if suggest_memory_format(input) == torch.channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
