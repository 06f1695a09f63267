"""BatchNorm on the mixed-node kernels, and the running-statistics bookkeeping of the fused cell.

`_BatchNormBatchStats` normalises with batch statistics (affine or not, optionally with the following ReLU folded
in); `_RunningStats` collects the running-statistics updates of one cell's BatchNorms and applies them together,
as nn.BatchNorm2d would have made them one by one. `batch_norm` and `_batch_norm_group` pick the kernels where
they run (batch statistics, CPU, extension built) and aten's batch_norm elsewhere.
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxynas_fast import extension
from proxynas_fast.ops.mixed_node import channel_affine_combine, channel_dot_sums, channel_moments, \
    channel_weighted_sum, rows_layout

from .dtypes import cast

Tensor = torch.Tensor


def _uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _count_batches(bns: Sequence[nn.BatchNorm2d]) -> float:
    """Mirror nn.BatchNorm2d.forward's bookkeeping for BatchNorms in training mode that share a momentum: bump
    every num_batches_tracked (one foreach call), return the averaging factor."""
    counters = [b.num_batches_tracked for b in bns if b.training and b.track_running_stats]
    if counters and counters[0] is not None:
        torch._foreach_add_(counters, 1)
        if bns[0].momentum is None:
            return 1.0 / float(counters[0])
    return 0.0 if bns[0].momentum is None else bns[0].momentum


def _bn_grad_coefficients(coef_g: Tensor, rstd: Tensor, mu: Tensor, sg: Tensor, sgz: Tensor,
                          count: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The backward of a batch-statistics BatchNorm z -> (z - mu) * rstd, scaled per channel by coef_g / rstd,
    folded into per-channel coefficients: dL/dz = coef_g * g + coef_z * z + coef_c, from sg = sum g and
    sgz = sum g * z. Returns (<g, normalised z>, coef_z, coef_c)."""
    sgxhat = rstd * (sgz - mu * sg)
    coef_z = -coef_g * rstd * sgxhat / count
    coef_c = -coef_g * sg / count - coef_z * mu
    return sgxhat, coef_z, coef_c


class _BatchNormBatchStats(torch.autograd.Function):
    """BatchNorm of y [N, C, H, W] with its batch statistics, by the mixed-node kernels, affine-free or with a
    weight and bias, and with `relu` the ReLU after it folded in (the output pass clamps; the backward passes read
    the gradient through the ReLU's gate, recomputed from y: no ReLU pass, no tensor or pass for its gradient): one
    pass for the statistics, one for the output; the backward one for the sums, one for the gradient. Returns
    (output, mean, biased variance); the statistics are not differentiable. y may be in planes
    (NCHW) or in channels_last (read in place; output and gradient in channels_last too). Used on CPU because
    aten's batch_norm is slower at the cells' sizes, in planes and in channels_last (docs/PERFORMANCE.md)."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, relu: bool = False):
        mean, var = channel_moments([y])
        mu, var = mean[0], var[0]
        rstd = torch.rsqrt(var + eps)
        scale = rstd if weight is None else cast(weight, rstd.dtype) * rstd
        shift = -scale * mu if bias is None else cast(bias, rstd.dtype) - scale * mu
        out = channel_weighted_sum([y], scale[None], shift, relu)
        ctx.save_for_backward(y, mu, rstd, scale, shift)
        ctx.relu = relu
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(mu, var)
        return out, mu, var

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_mean, _grad_var):
        y, mu, rstd, scale, shift = ctx.saved_tensors
        g = cast(grad, y.dtype)
        g = g.contiguous(memory_format=torch.channels_last) if rows_layout(y) else g.contiguous()
        gate = torch.stack([scale, shift]) if ctx.relu else None  # the output's sign, as the forward rounded it
        sg, sgz = channel_dot_sums(g, [y], gate)
        sgxhat, coef_z, coef_c = _bn_grad_coefficients(scale, rstd, mu, sg, sgz[0], g.numel() // g.shape[1])
        dy = None
        if ctx.needs_input_grad[0]:
            (dy,) = channel_affine_combine(g, [y], scale[None], coef_z[None], coef_c[None], gate)
        weight_dtype, bias_dtype = ctx.param_dtypes
        dweight = cast(sgxhat, weight_dtype) if weight_dtype is not None and ctx.needs_input_grad[1] else None
        dbias = cast(sg, bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] else None
        return dy, dweight, dbias, None, None


def _on_kernels(y: Tensor, bn: nn.BatchNorm2d) -> bool:
    """Whether `bn` on `y` runs on the mixed-node kernels: batch statistics, on CPU, with the extension."""
    return _uses_batch_stats(bn) and y.device.type == "cpu" and extension.has_cpu_kernels()


def _kernel_batch_norm(y: Tensor, bns: Sequence[nn.BatchNorm2d], weight: Optional[Tensor] = None,
                       bias: Optional[Tensor] = None, stats: Optional["_RunningStats"] = None,
                       relu: bool = False) -> Tensor:
    """`_BatchNormBatchStats` of y (with `relu`, followed by a ReLU), channel block e belonging to bns[e] (same
    eps/momentum); their running statistics updated at once, or by `stats.apply()` when `stats` collects a cell's
    updates."""
    bn0 = bns[0]
    out, mean, var = _BatchNormBatchStats.apply(y, weight, bias, bn0.eps, relu)
    if bn0.running_mean is not None:
        rows = (len(bns), bn0.num_features)
        pending = _RunningStats() if stats is None else stats
        pending.add(bns, mean.view(rows), var.view(rows), y.numel() // y.shape[1])
        if stats is None:
            pending.apply()
    return out


def batch_norm(y: Tensor, bn: nn.BatchNorm2d, relu: bool = False) -> Tensor:
    """`bn(y)` (with `relu`, `relu(bn(y))`): on the mixed-node kernels (`_BatchNormBatchStats`, affine or not, the
    ReLU folded in) when `bn` normalises with batch statistics on CPU, its running statistics updated as the
    module does; else the module itself (and a ReLU)."""
    if y.dim() == 4 and _on_kernels(y, bn):
        return _kernel_batch_norm(y, [bn], bn.weight, bn.bias, relu=relu)
    return F.relu(bn(y), inplace=True) if relu else bn(y)


class _RunningStats:
    """The running-statistics updates (as nn.BatchNorm2d makes them in training mode) of the batch-statistics
    BatchNorms of one cell's forward, collected and applied together at its end: one counter bump and two lerps
    per momentum, instead of a set per BatchNorm group (a cell has about 15 groups). Nothing in the forward reads them
    meanwhile (a BatchNorm that uses batch statistics does not read its running ones)."""

    def __init__(self):
        self.bns: List[nn.BatchNorm2d] = []
        self.means: List[Tensor] = []
        self.variances: List[Tensor] = []   # unbiased

    def add(self, bns: Sequence[nn.BatchNorm2d], mean: Tensor, var: Tensor, count: int) -> None:
        """Row k of mean / var (biased, over `count` values per channel) is bns[k]'s batch statistics. Rows are
        taken as views (`unbind`), never by indexing with a host list (that would copy the list to the device:
        a sync per node, and an error under CUDA-graph capture)."""
        tracked = [k for k, b in enumerate(bns) if b.running_mean is not None]
        if not tracked:
            return
        with torch.no_grad():
            means, variances = mean.unbind(0), (var * (count / max(count - 1, 1))).unbind(0)
        if len(tracked) == len(bns):
            self.bns.extend(bns)
            self.means.extend(means)
            self.variances.extend(variances)
            return
        for k in tracked:
            self.bns.append(bns[k])
            self.means.append(means[k])
            self.variances.append(variances[k])

    def apply(self) -> None:
        if self.bns:
            _update_running_stats(self.bns, self.means, self.variances)
        self.bns, self.means, self.variances = [], [], []


def _update_running_stats(bns: Sequence[nn.BatchNorm2d], means: Sequence[Tensor],
                          variances: Sequence[Tensor]) -> None:
    """running_mean / running_var of bns[k] move towards means[k] / variances[k] (unbiased) by the momentum, or
    by the cumulative average (momentum None, which depends on each module's own count)."""
    by_momentum: Dict[Hashable, List[int]] = {}
    for k, b in enumerate(bns):
        by_momentum.setdefault(b.momentum if b.momentum is not None else id(b), []).append(k)
    with torch.no_grad():
        for group in by_momentum.values():
            members = [bns[k] for k in group] if len(group) < len(bns) else list(bns)
            factor = _count_batches(members)
            running_means = [b.running_mean for b in members]
            running_vars = [b.running_var for b in members]
            torch._foreach_lerp_(running_means, [cast(means[k], r.dtype) for k, r in zip(group, running_means)],
                                 factor)
            torch._foreach_lerp_(running_vars, [cast(variances[k], r.dtype) for k, r in zip(group, running_vars)],
                                 factor)


def _batch_norm_group(y: Tensor, bns: Sequence[nn.BatchNorm2d], stats: Optional[_RunningStats] = None,
                      relu: bool = False) -> Tensor:
    """BatchNorm of [N, E*C, H, W] where channel block e belongs to bns[e] (same eps/momentum), in one call, with
    `relu` followed by a ReLU. With batch statistics on CPU it runs on the mixed-node kernels
    (`_BatchNormBatchStats`, the ReLU folded in), else aten's. The running statistics are updated at once, or by
    `stats.apply()` when `stats` collects a cell's updates."""
    bn0 = bns[0]
    if _on_kernels(y, bn0):
        return _kernel_batch_norm(y, bns, stats=stats, relu=relu)
    training = _uses_batch_stats(bn0)
    tracked = bn0.running_mean is not None
    factor = 0.0
    if training and tracked:
        with torch.no_grad():
            factor = _count_batches(bns)
    rm = torch.cat([b.running_mean for b in bns]) if tracked else None
    rv = torch.cat([b.running_var for b in bns]) if tracked else None
    out = F.batch_norm(y, rm, rv, None, None, training, factor, bn0.eps)
    if training and tracked:
        with torch.no_grad():
            torch._foreach_copy_([b.running_mean for b in bns], list(rm.split(bn0.num_features)))
            torch._foreach_copy_([b.running_var for b in bns], list(rv.split(bn0.num_features)))
    return F.relu(out, inplace=True) if relu else out
