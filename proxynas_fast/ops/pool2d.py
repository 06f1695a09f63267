"""2-D max / average pooling (`proxynas_fast::pool2d`), differentiable, as the DARTS search cell uses them.

`pool2d(input, is_max, kernel, stride, padding)` equals `F.max_pool2d(input, kernel, stride, padding)` or
`F.avg_pool2d(input, kernel, stride, padding, count_include_pad=False)` (floor output size, no dilation). The
CPU kernel is several times faster than PyTorch's on NCHW planes, and its max backward needs the forward output
instead of int64 indices (which take twice the output's bytes). Other devices, and builds without the extension,
use the PyTorch functions.
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
    return int_pair("pool2d", name, v)


def pool2d_reference(input: Tensor, is_max: bool, kernel: IntPair, stride: IntPair, padding: IntPair) -> Tensor:
    """Pure-PyTorch definition (ground truth of the tests, and the path on devices without a kernel)."""
    if is_max:
        return F.max_pool2d(input, kernel, stride, padding)
    return F.avg_pool2d(input, kernel, stride, padding, count_include_pad=False)


def pool2d(input: Tensor, is_max: bool, kernel: IntPair, stride: IntPair, padding: IntPair) -> Tensor:
    k, s, p = _pair("kernel", kernel), _pair("stride", stride), _pair("padding", padding)
    if input.dim() != 4:
        raise ValueError(f"pool2d: input must be [N, C, H, W], got shape {tuple(input.shape)}")
    if not extension.use_compiled("pool2d", input.device, cuda_kernel=False):
        return pool2d_reference(input, is_max, k, s, p)
    return torch.ops.proxynas_fast.pool2d(input, bool(is_max), list(k), list(s), list(p))


def pool2d_backward(grad_output: Tensor, input: Tensor, output: Tensor, is_max: bool, kernel: IntPair,
                    stride: IntPair, padding: IntPair) -> Tensor:
    """Gradient of `pool2d` with respect to its input, from the forward's input and output (no saved indices;
    without the CPU kernel, max pooling recomputes PyTorch's indices)."""
    k, s, p = _pair("kernel", kernel), _pair("stride", stride), _pair("padding", padding)
    if extension.use_compiled("pool2d_backward", input.device, cuda_kernel=False):
        return torch.ops.proxynas_fast.pool2d_backward(grad_output, input, output, bool(is_max), list(k), list(s),
                                                       list(p))
    if is_max:
        _, indices = torch.ops.aten.max_pool2d_with_indices(input, list(k), list(s), list(p), [1, 1], False)
        return torch.ops.aten.max_pool2d_with_indices_backward(grad_output, input, list(k), list(s), list(p),
                                                               [1, 1], False, indices)
    return torch.ops.aten.avg_pool2d_backward(grad_output, input, list(k), list(s), list(p), False, False, None)


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


if extension.has_cpu_kernels():

    @torch.library.register_fake("proxynas_fast::pool2d")
    def _pool2d_fake(input, is_max, kernel, stride, padding):
        N, C, H, W = input.shape
        return empty_in_layout_of(input, (N, C, _out_size(H, kernel[0], stride[0], padding[0]),
                                          _out_size(W, kernel[1], stride[1], padding[1])))

    @torch.library.register_fake("proxynas_fast::pool2d_backward")
    def _pool2d_backward_fake(grad_output, input, output, is_max, kernel, stride, padding):
        return empty_in_layout_of(input, input.shape)

    # The autograd is in C++ (csrc/ops/autograd/pool2d_autograd.cpp).
