"""Grouped pointwise (1x1) convolution (`proxynas_fast::pw_conv2d`), differentiable.

input [N, E*Ci, H, W], weight [E, Co, Ci] -> [N, E*Co, H, W]: output channels e*Co..(e+1)*Co are the 1x1
convolution (no bias) of input channels e*Ci..(e+1)*Ci with weight[e]. The fused DARTS cell computes the
pointwise convolutions of all E edges that read one node this way. With E = 1 it is
`F.conv2d(input, weight[0, :, :, None, None])`. `pw_conv2d_groups` is the same convolution returning each group's
output as its own [N, Co, H, W] tensor: the fused cell hands each edge's block to a different node, and separate
tensors get their gradients without the concatenation a split of one output makes in its backward.

The CPU kernel computes each (sample, group) plane as a register-tiled matrix product (ops/cpu/pw_conv2d_kernel.cpp);
on other devices, and without the extension, the wrapper runs the reference, a broadcast `torch.matmul` (cuBLAS
batches it well).
"""
from __future__ import annotations

from typing import List

import torch

from .. import extension
from ._layout import empty_in_layout_of

Tensor = torch.Tensor


def _check(input: Tensor, weight: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"pw_conv2d: input must be [N, E*Ci, H, W], got shape {tuple(input.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"pw_conv2d: weight must be [E, Co, Ci], got shape {tuple(weight.shape)}")
    E, _, Ci = weight.shape
    if input.shape[1] != E * Ci:
        raise ValueError(f"pw_conv2d: input has {input.shape[1]} channels, weight {tuple(weight.shape)} "
                         f"= [E, Co, Ci] needs E*Ci = {E * Ci}")


def pw_conv2d_reference(input: Tensor, weight: Tensor) -> Tensor:
    """Pure-PyTorch definition (ground truth of the tests, the fallback, and the path on CUDA)."""
    _check(input, weight)
    N, _, H, W = input.shape
    E, Co, Ci = weight.shape
    y = torch.matmul(weight, input.reshape(N, E, Ci, H * W))
    return y.reshape(N, E * Co, H, W)


def _on_cpu_kernel(op, input: Tensor, weight: Tensor):
    """`op(input, weight)` (pw_conv2d or pw_conv2d_groups) on CPU: under torch.autocast both operands cast to the
    autocast dtype, else their dtypes must agree."""
    if not torch.is_autocast_enabled("cpu"):
        if weight.dtype != input.dtype:
            raise ValueError(f"pw_conv2d: input ({input.dtype}) and weight ({weight.dtype}) dtypes differ")
        return op(input, weight)
    dtype = torch.get_autocast_dtype("cpu")
    with torch.autocast("cpu", enabled=False):
        return op(input.to(dtype), weight.to(dtype))


def _uses_cpu_kernel(input: Tensor) -> bool:
    return extension.use_compiled("pw_conv2d", input.device, cuda_kernel=False)


def pw_conv2d(input: Tensor, weight: Tensor) -> Tensor:
    """Grouped 1x1 convolution (see module docstring). Under torch.autocast both operands are cast to the autocast
    dtype, like F.conv2d and torch.matmul; bfloat16/float16 are computed in float32 on CPU."""
    _check(input, weight)
    if not _uses_cpu_kernel(input):
        return pw_conv2d_reference(input, weight)
    return _on_cpu_kernel(torch.ops.proxynas_fast.pw_conv2d, input, weight)


def pw_conv2d_groups_reference(input: Tensor, weight: Tensor) -> List[Tensor]:
    """`pw_conv2d_reference` with group e's output channels as tensor e."""
    return list(pw_conv2d_reference(input, weight).split(weight.shape[1], dim=1))


def pw_conv2d_groups(input: Tensor, weight: Tensor) -> List[Tensor]:
    """`pw_conv2d`, each group's output [N, Co, H, W] a tensor of its own (see module docstring); on CPU they are
    separate tensors (in the input's layout), elsewhere the reference's views of one."""
    _check(input, weight)
    if not _uses_cpu_kernel(input):
        return pw_conv2d_groups_reference(input, weight)
    return list(_on_cpu_kernel(torch.ops.proxynas_fast.pw_conv2d_groups, input, weight))


if extension.has_cpu_kernels():

    @torch.library.register_fake("proxynas_fast::pw_conv2d")
    def _pw_conv2d_fake(input, weight):
        N, _, H, W = input.shape
        return empty_in_layout_of(input, (N, weight.shape[0] * weight.shape[1], H, W))

    @torch.library.register_fake("proxynas_fast::pw_conv2d_backward")
    def _pw_conv2d_backward_fake(grad_output, input, weight, output_mask):
        return (empty_in_layout_of(input, input.shape) if output_mask[0] else None,
                weight.new_empty(weight.shape) if output_mask[1] else None)

    @torch.library.register_fake("proxynas_fast::pw_conv2d_groups")
    def _pw_conv2d_groups_fake(input, weight):
        N, _, H, W = input.shape
        return [empty_in_layout_of(input, (N, weight.shape[1], H, W)) for _ in range(weight.shape[0])]

    @torch.library.register_fake("proxynas_fast::pw_conv2d_groups_backward")
    def _pw_conv2d_groups_backward_fake(grads, input, weight, output_mask):
        return (empty_in_layout_of(input, input.shape) if output_mask[0] else None,
                weight.new_empty(weight.shape) if output_mask[1] else None)

    # Autograd: csrc/ops/autograd/pw_conv2d_autograd.cpp (C++, no Python per call; only the gradients the pass uses).
