"""The mixed node: one autograd function per intermediate node of a cell (`_MixedNode`).

node = sum over its terms of a[k] * normalise(z_k), where the terms are every candidate of every incoming edge
(pooled, convolved or the state itself) and `a` their architecture weights. The forward keeps neither the
per-candidate outputs nor the normalised tensors; the backward gives the architecture-weight gradient
<dL/dnode, op_k(h_j)> as a by-product of the BatchNorm backward sums. Poolings are shared by the nodes that read
the same state (`_SharedPool`): computed once in the forward, recomputed once in the backward.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from proxynas_fast.ops._args import inputs_needing_grad
from proxynas_fast.ops.mixed_node import channel_affine_combine, channel_dot_sums, channel_moments, \
    channel_weighted_sum
from proxynas_fast.ops.pool2d import pool2d, pool2d_backward

from .dtypes import accumulation_dtype, cast, common_dtype
from .kernel_batch_norm import _bn_grad_coefficients, _RunningStats
from .plan import FusedCellError, _NodeIndex, _NodePlan, _Term

Tensor = torch.Tensor


class _SharedPool:
    """One pooling (max or avg) of one state, shared by the nodes of a cell that read the state (made afresh by
    every forward of the cell).

    Forward: computed once (`value`), kept only until the cell's forward ends (`release`). Backward: the DARTS
    cell's structure orders the nodes' backward passes: the first node that reads the state (the *owner*) runs
    after all the other readers, because they all read its output. So the other readers deposit their gradient
    with respect to the pooled tensor (`deposit`), and the owner adds its own, runs the one pooling backward and
    frees everything (`backward`). The pooled tensor is recomputed once in the backward, by whichever reader
    needs it first."""

    def __init__(self, is_max: bool, args: Tuple):
        self.is_max = is_max
        self.args = args
        self._value: Optional[Tensor] = None
        self._grad: Optional[Tensor] = None

    def value(self, h: Tensor) -> Tensor:
        if self._value is None:
            self._value = pool2d(h.detach(), self.is_max, *self.args)
        return self._value

    def release(self) -> None:
        self._value = None

    def deposit(self, grad: Tensor) -> None:
        self._grad = grad if self._grad is None else self._grad.add_(grad)

    def backward(self, grad: Tensor, h: Tensor) -> Tensor:
        if self._grad is not None:
            grad = grad.add_(self._grad)  # grad: the owner node's new term gradient
        out = pool2d_backward(cast(grad, h.dtype), h, self.value(h), self.is_max, *self.args)
        self._value = self._grad = None
        return out


def _term_values(terms: Sequence[_Term], pools: Sequence[_SharedPool], tensors: Sequence[Tensor],
                 dtype: torch.dtype) -> List[Tensor]:
    return [cast(pools[t.pool].value(tensors[t.src]) if t.kind == "pool" else tensors[t.src], dtype) for t in terms]


def _node_statistics(node: _NodePlan, index: _NodeIndex, zs: Sequence[Tensor], stat_dtype: torch.dtype,
                     stats: _RunningStats) -> Tuple[Tensor, Tensor]:
    """Per term and channel, the mean and 1/std each term is normalised with ([K, C] each; 0 and 1 for the
    identity terms); the running-statistics updates of the batch-statistics terms go to `stats`."""
    terms, C = node.terms, zs[0].shape[1]
    mu = zs[0].new_zeros((len(terms), C), dtype=stat_dtype)
    rstd = zs[0].new_ones((len(terms), C), dtype=stat_dtype)
    if index.batch:
        mean, var = channel_moments([zs[k] for k in index.batch])
        eps = {terms[k].bn.eps for k in index.batch}
        if len(eps) != 1:
            raise FusedCellError("fused node: the BatchNorms of one node must share eps")
        mu[index.batch_index] = mean
        rstd[index.batch_index] = torch.rsqrt(var + eps.pop())
        stats.add([terms[k].bn for k in index.batch], mean, var, zs[0].numel() // C)
    if index.fixed:
        bns = [terms[k].bn for k in index.fixed]
        mu[index.fixed_index] = torch.stack([cast(b.running_mean, stat_dtype) for b in bns])
        rstd[index.fixed_index] = torch.stack([torch.rsqrt(cast(b.running_var, stat_dtype) + b.eps) for b in bns])
    return mu, rstd


class _MixedNode(torch.autograd.Function):
    """node = sum over terms of a[k] * normalize(z_k) (see module docstring); `a` holds the node's candidate
    weights, gathered for all nodes of the cell at once (`_fused_cell`)."""

    @staticmethod
    def forward(ctx, a: Tensor, *args) -> Tensor:
        *tensors, (node, index, pools, stats) = args  # tensors first: see inputs_needing_grad
        dtype = common_dtype(tensors)
        zs = _term_values(node.terms, pools, tensors, dtype)
        stat_dtype = accumulation_dtype(dtype)
        mu, rstd = _node_statistics(node, index, zs, stat_dtype, stats)
        a = cast(a.detach(), stat_dtype).clone()  # saved: must not alias the input (torch.compile refuses that)
        scale = a[:, None] * rstd
        bias = -(scale * mu).sum(0)
        out = channel_weighted_sum(zs, scale, bias)
        ctx.node, ctx.index, ctx.pools, ctx.dtype = node, index, pools, dtype
        ctx.save_for_backward(a, mu, rstd, *tensors)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, mu, rstd, *tensors = ctx.saved_tensors
        node, index, pools, dtype = ctx.node, ctx.index, ctx.pools, ctx.dtype
        g = cast(grad, dtype).contiguous()
        zs = _term_values(node.terms, pools, tensors, dtype)
        sg, sgz = channel_dot_sums(g, zs)
        coef_g = a[:, None] * rstd
        sgxhat, coef_z, coef_c = _bn_grad_coefficients(coef_g, rstd, mu, sg[None, :], sgz, g.numel() // g.shape[1])
        coef_z = torch.where(index.batch_mask, coef_z, 0.0)   # running-statistics terms: a fixed affine map
        coef_c = torch.where(index.batch_mask, coef_c, 0.0)
        needs = inputs_needing_grad(ctx, 1, 1 + len(tensors))  # e.g. the first cell's, in the architecture step
        grads = _input_gradients(node, index, pools, tensors, needs, g, zs, (coef_g, coef_z, coef_c), dtype)
        grad_a = sgxhat.sum(1) if ctx.needs_input_grad[0] else None
        return (grad_a, *grads, None)


def _input_gradients(node: _NodePlan, index: _NodeIndex, pools: Sequence[_SharedPool], tensors: Sequence[Tensor],
                     needs: Sequence[bool], g: Tensor, zs: List[Tensor], coefs: Tuple[Tensor, Tensor, Tensor],
                     dtype: torch.dtype) -> List[Optional[Tensor]]:
    """Gradients of the node's inputs: the normalised terms' in one kernel call (pooled ones through their
    shared pooling), identity terms scale the incoming gradient."""
    terms = node.terms
    grads: List[Optional[Tensor]] = [None] * len(tensors)

    def add(i: int, value: Tensor) -> None:  # every value is a new tensor made here: summed in place
        grads[i] = value if grads[i] is None else grads[i].add_(value)

    direct, sel = node.normalised, index.normalised_index
    if not all(needs[terms[k].src] for k in direct):
        direct = [k for k in direct if needs[terms[k].src]]
        sel = index.subset(direct, g.device)
    if direct:
        coef_g, coef_z, coef_c = (c[sel] for c in coefs)
        dz = channel_affine_combine(g, [zs[k] for k in direct], coef_g, coef_z, coef_c)
        for k, d in zip(direct, dz):
            t = terms[k]
            if t.kind == "z":
                add(t.src, d)
            elif t.owner:
                add(t.src, pools[t.pool].backward(d, tensors[t.src]))
            else:
                pools[t.pool].deposit(d)
    del zs
    for k in node.identity:
        if needs[terms[k].src]:
            add(terms[k].src, g * cast(coefs[0][k].view(1, -1, 1, 1), dtype))
    for t in terms:
        if t.kind == "pool" and t.owner and not needs[t.src]:
            pools[t.pool].release()
    return [None if d is None else cast(d, x.dtype) for d, x in zip(grads, tensors)]
