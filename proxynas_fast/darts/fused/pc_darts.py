"""PC-DARTS's joins: partial channels (`_split_state`), the beta-weighted bypass (`_ScaledSum`) and the channel
shuffle of a node's output (`_ShuffledJoin`), combined per node by `_pc_combine`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from proxynas_fast.ops.mixed_node import channel_dot_sums, channel_weighted_sum

from .dtypes import accumulation_dtype, cast, common_dtype
from .plan import _CellPlan

Tensor = torch.Tensor


def _split_state(h: Tensor, k: int) -> Tuple[Tensor, Optional[Tensor]]:
    """(the channels the mixed ops see, the bypassed rest): PC-DARTS's first C/k channels and the others, as
    the two views of one split made once per state, so that the backward accumulates each part's gradient over
    its readers and joins the two once (per-use slices would each scatter into a zero-filled full-size
    gradient, then add those). Without partial channels, (h, None)."""
    if k == 1:
        return h, None
    active, rest = h.split([h.shape[1] // k, h.shape[1] - h.shape[1] // k], dim=1)
    return active, rest


def _pc_combine(plan: _CellPlan, mixed_sum: Tensor, splits: Sequence[Tuple[Tensor, Optional[Tensor]]],
                edges: Sequence[int], edge_weights: Tensor, pooled: Dict[Tuple, Tensor]) -> Tensor:
    """PC-DARTS node from the (beta-weighted) sum of the mixed parts: add the beta-weighted bypassed channels
    (`splits[j][1]`: state j's channels after the first C/k; max-pooled 2x2 on strided edges, once per state:
    `pooled` keeps them over the cell's nodes), then shuffle channels like each edge's output (a linear
    permutation, so shuffling the sum equals summing the shuffled edges): `_ShuffledJoin`."""
    bypassed = []
    for j, ((_, rest), e) in enumerate(zip(splits, edges)):
        if e in plan.bypass_pools:
            key = (j, plan.bypass_keys[e])
            if key not in pooled:
                pooled[key] = plan.bypass_pools[e](rest)
            rest = pooled[key]
        bypassed.append(rest)
    betas = edge_weights.narrow(0, edges[0], len(edges))  # a node's edges are consecutive rows
    bypass = _ScaledSum.apply(betas, *bypassed)
    return _ShuffledJoin.apply(mixed_sum, cast(bypass, mixed_sum.dtype), plan.pc_k)


class _ShuffledJoin(torch.autograd.Function):
    """channel_shuffle(cat([mixed, bypass], dim=1), k) written in one pass, with no cat and no separate shuffle copy;
    the backward gathers each input's gradient in one pass, with no copy of non-contiguous slices. Output channel i*k + g is input channel g*c + i, c = mixed's channels (the first group)."""

    @staticmethod
    def forward(ctx, mixed: Tensor, bypass: Tensor, k: int) -> Tensor:
        N, c, H, W = mixed.shape
        out = mixed.new_empty((N, c * k, H, W))
        slots = out.view(N, c, k, H, W)
        slots[:, :, 0].copy_(mixed)
        slots[:, :, 1:].copy_(bypass.view(N, k - 1, c, H, W).transpose(1, 2))
        ctx.k = k
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        N, C, H, W = grad.shape
        k = ctx.k
        slots = grad.reshape(N, C // k, k, H, W)
        d_mixed = slots[:, :, 0].contiguous() if ctx.needs_input_grad[0] else None
        d_bypass = slots[:, :, 1:].transpose(1, 2).reshape(N, C - C // k, H, W) if ctx.needs_input_grad[1] else None
        return d_mixed, d_bypass, None


class _ScaledSum(torch.autograd.Function):
    """sum_k betas[k] * terms[k] (terms of one shape [N, C, H, W]) in one pass of the mixed-node kernels, and in
    the backward d betas[k] = <grad, terms[k]> in one more, rather than a scaled copy and an add per
    term (forward) and a product and a sum (backward). The terms are kept, not copied (they are the cell's states or their
    pooled bypass channels, which autograd keeps anyway)."""

    @staticmethod
    def forward(ctx, betas: Tensor, *terms: Tensor) -> Tensor:
        dtype = common_dtype(terms)
        zs = [cast(t, dtype) for t in terms]
        C = zs[0].shape[1]
        stat_dtype = accumulation_dtype(dtype)
        b = cast(betas.detach(), stat_dtype)
        out = channel_weighted_sum(zs, b[:, None].expand(len(zs), C), b.new_zeros(C))
        ctx.save_for_backward(betas, *terms)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        betas, *terms = ctx.saved_tensors
        g = cast(grad, ctx.dtype).contiguous()
        grad_betas = None
        if ctx.needs_input_grad[0]:
            _, sgz = channel_dot_sums(g, [cast(t, ctx.dtype) for t in terms])
            grad_betas = cast(sgz.sum(1), betas.dtype)
        grads = [cast(g * cast(betas[k], g.dtype), t.dtype) if ctx.needs_input_grad[1 + k] else None
                 for k, t in enumerate(terms)]
        return (grad_betas, *grads)
