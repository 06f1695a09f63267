"""Depthwise 2-D convolution with a channel multiplier (`proxynas_fast::dw_conv2d`), differentiable.

input [N, C, H, W], weight [M*C, 1, KH, KW] -> [N, M*C, Ho, Wo]; output channel m*C + c convolves input channel
c with kernel m*C + c. With M = 1 this is `F.conv2d(input, weight, groups=C)`; with M > 1 it computes M
depthwise convolutions of the same input at once, their outputs as M contiguous channel blocks (the fused DARTS
cell uses one block per edge that reads the same node).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .. import extension
from ._args import IntPair, int_pair
from ._layout import empty_in_layout_of

Tensor = torch.Tensor


def _pair(name: str, v: IntPair) -> Tuple[int, int]:
    return int_pair("dw_conv2d", name, v)


def _check(input: Tensor, weight: Tensor) -> int:
    if input.dim() != 4:
        raise ValueError(f"dw_conv2d: input must be [N, C, H, W], got shape {tuple(input.shape)}")
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"dw_conv2d: weight must be [M*C, 1, KH, KW], got shape {tuple(weight.shape)}")
    C = input.shape[1]
    if C == 0 or weight.shape[0] % C != 0:
        raise ValueError(f"dw_conv2d: weight's {weight.shape[0]} output channels are not a multiple of the "
                         f"input's {C} channels")
    return weight.shape[0] // C


def dw_conv2d_reference(input: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 0,
                        dilation: IntPair = 1) -> Tensor:
    """Pure-PyTorch definition (ground truth of the tests, and the fallback without the extension)."""
    M = _check(input, weight)
    x = input.repeat(1, M, 1, 1) if M > 1 else input
    return F.conv2d(x, weight, None, _pair("stride", stride), _pair("padding", padding),
                    _pair("dilation", dilation), groups=weight.shape[0])


def dw_conv2d(input: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 0,
              dilation: IntPair = 1) -> Tensor:
    """Depthwise convolution (see module docstring). Under torch.autocast both operands are cast to the autocast
    dtype, like F.conv2d; bfloat16/float16 are computed in float32 on CPU."""
    _check(input, weight)
    s, p, d = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    device_type = input.device.type
    autocast = torch.is_autocast_enabled(device_type)
    if autocast:
        dtype = torch.get_autocast_dtype(device_type)
        input, weight = input.to(dtype), weight.to(dtype)
    elif weight.dtype != input.dtype:
        raise ValueError(f"dw_conv2d: input ({input.dtype}) and weight ({weight.dtype}) dtypes differ")
    if not extension.use_compiled("dw_conv2d", input.device):
        return dw_conv2d_reference(input, weight, s, p, d)
    if not autocast:  # entering even a disabled autocast costs time, and a search step makes ~1,000 calls
        return torch.ops.proxynas_fast.dw_conv2d(input, weight, list(s), list(p), list(d))
    with torch.autocast(device_type, enabled=False):
        return torch.ops.proxynas_fast.dw_conv2d(input, weight, list(s), list(p), list(d))


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """conv2d's output size; the same rule and error as the kernels' (csrc/ops/dw_conv2d.h)."""
    if k < 1:
        raise ValueError(f"dw_conv2d: kernel must be at least 1x1, got size {k}")
    span = size + 2 * p - d * (k - 1) - 1
    if span < 0:
        raise ValueError(f"dw_conv2d: output would be empty: the dilated kernel ({d * (k - 1) + 1}) is larger than "
                         f"the padded input ({size + 2 * p})")
    return span // s + 1


if extension.has_cpu_kernels():

    @torch.library.register_fake("proxynas_fast::dw_conv2d")
    def _dw_conv2d_fake(input, weight, stride, padding, dilation):
        N, _, H, W = input.shape
        KH, KW = weight.shape[2], weight.shape[3]
        return empty_in_layout_of(input, (N, weight.shape[0], _out_size(H, KH, stride[0], padding[0], dilation[0]),
                                          _out_size(W, KW, stride[1], padding[1], dilation[1])))

    @torch.library.register_fake("proxynas_fast::dw_conv2d_backward")
    def _dw_conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, output_mask):
        return (empty_in_layout_of(input, input.shape) if output_mask[0] else None,
                weight.new_empty(weight.shape) if output_mask[1] else None)

    # Autograd: csrc/ops/autograd/dw_conv2d_autograd.cpp (C++, no Python per call; only the gradients the pass uses).
