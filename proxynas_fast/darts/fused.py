"""Fused evaluation of DARTS / PC-DARTS search cells (`backend="fused"`).

Computes exactly the function of `Cell.reference_forward` (and `PCCell.reference_forward`) from the cell's own
modules, so parameters, buffers and the state_dict are shared with the reference path; forward and backward,
in training mode (batch-statistics BatchNorm, running statistics updated like nn.BatchNorm2d) and in eval mode.

What is fused, relative to the reference (which evaluates 8 ops on each of the 14 edges independently):

* one ReLU per node, shared by the 4 convolutional candidates (and the FactorizedReduce skip) of every edge that
  reads the node (the reference applies 4-5 ReLUs per edge);
* the depthwise convolutions of one candidate type on all E edges that read the same node run as one depthwise
  convolution with channel multiplier E (`proxynas_fast.ops.dw_conv2d`, a fast CPU kernel), the pointwise
  convolutions as one batched matmul, the inner BatchNorm of the separable convolutions as one call;
* the stride-2 FactorizedReduce skips of all edges leaving a cell input: one 2x2 stride-2 convolution;
* per node, one autograd function (`_MixedNode`) evaluates pooling, identity, zero, every final BatchNorm
  (affine-free) and the weighted sum over candidates and incoming edges, with the `proxynas_fast.ops.mixed_node`
  kernels: it keeps neither per-op outputs nor normalised tensors and computes the architecture-weight gradient
  dL/dw[e, k] = <dL/dnode, op_k(h_j)> as a by-product of the BN backward sums;
* pooling (`proxynas_fast.ops.pool2d`, a fast CPU kernel) runs once per state and pool type in the forward, shared
  by every node that reads the state, and is dropped after the cell's forward; in the backward it is recomputed
  once, the gradients of all the reading nodes are summed, and one pooling backward runs (`_SharedPool`).

Inputs in channels_last are accepted (the cell computes in NCHW and returns NCHW); bfloat16 under torch.autocast
follows the reference's dtypes (convolutions in bfloat16, statistics and sums accumulated in float32).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxynas_fast.ops.dw_conv2d import dw_conv2d
from proxynas_fast.ops.mixed_node import (channel_affine_combine, channel_dot_sums, channel_moments,
                                          channel_weighted_sum)
from proxynas_fast.ops.pool2d import pool2d, pool2d_backward

from .genotypes import PRIMITIVES
from .operations import DilConv, FactorizedReduce, Identity, SepConv, Zero, channel_shuffle

Tensor = torch.Tensor

_COL = {p: i for i, p in enumerate(PRIMITIVES)}
_CONV_PRIMITIVES = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
_POOL_PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3")
_EXPECTED = {
    "none": (Zero,), "max_pool_3x3": (nn.Sequential,), "avg_pool_3x3": (nn.Sequential,),
    "skip_connect": (Identity, FactorizedReduce), "sep_conv_3x3": (SepConv,), "sep_conv_5x5": (SepConv,),
    "dil_conv_3x3": (DilConv,), "dil_conv_5x5": (DilConv,),
}


class FusedCellError(ValueError):
    """The cell's structure is not one the fused path knows how to evaluate."""


# --------------------------------------------------------------------------------------------------------------
# Batch normalisation helpers (affine-free, as in the search cells)
# --------------------------------------------------------------------------------------------------------------
def _uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or bn.running_mean is None


def _count_batch(bn: nn.BatchNorm2d) -> float:
    """Mirror nn.BatchNorm2d.forward's bookkeeping: bump num_batches_tracked, return the averaging factor."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else bn.momentum


def _batch_norm_group(y: Tensor, bns: Sequence[nn.BatchNorm2d]) -> Tensor:
    """BatchNorm of [N, E*C, H, W] where channel block e belongs to bns[e] (same eps/momentum), in one call."""
    bn0 = bns[0]
    training = _uses_batch_stats(bn0)
    tracked = bn0.running_mean is not None
    factor = 0.0
    if training and tracked:
        with torch.no_grad():
            factor = [_count_batch(b) for b in bns][0]
    rm = torch.cat([b.running_mean for b in bns]) if tracked else None
    rv = torch.cat([b.running_var for b in bns]) if tracked else None
    out = F.batch_norm(y, rm, rv, None, None, training, factor, bn0.eps)
    if training and tracked:
        with torch.no_grad():
            torch._foreach_copy_([b.running_mean for b in bns], list(rm.split(bn0.num_features)))
            torch._foreach_copy_([b.running_var for b in bns], list(rv.split(bn0.num_features)))
    return out


# --------------------------------------------------------------------------------------------------------------
# The fused node
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Term:
    """One candidate output in a node sum: kind "z" (a given pre-BN tensor), "pool" (the source pooled through
    `pool`, then normalised) or "id" (the source itself)."""

    kind: str
    src: int                      # index into the node's tensor inputs
    row: int                      # edge (row of the weights)
    col: int                      # candidate (column of the weights)
    bn: Optional[nn.BatchNorm2d] = None
    pool: Optional["_SharedPool"] = None
    owner: bool = False           # this node runs the pooling backward (see _SharedPool)


class _SharedPool:
    """One pooling (max or avg) of one state, shared by the nodes of a cell that read the state.

    Forward: computed once (`value`), kept only until the cell's forward ends (`release`). Backward: the DARTS
    cell's structure orders the nodes' backward passes: the first node that reads the state (the *owner*) runs
    after all the other readers, because they all read its output. So the other readers deposit their gradient
    with respect to the pooled tensor (`deposit`), and the owner adds its own, runs the one pooling backward and
    frees everything (`backward`). The pooled tensor is recomputed once in the backward, by whichever reader
    needs it first."""

    def __init__(self, module: nn.Module):
        self.is_max = isinstance(module, nn.MaxPool2d)
        self.args = (module.kernel_size, module.stride, module.padding)
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
            grad = grad + self._grad
        out = pool2d_backward(grad.to(h.dtype), h, self.value(h), self.is_max, *self.args)
        self._value = self._grad = None
        return out


@dataclass
class _NodeSpec:
    terms: List[_Term]


_index_cache: Dict[Tuple, Tensor] = {}


def _device_index(values: Tuple[int, ...], device: torch.device) -> Tensor:
    """A cached int64 tensor of `values` on `device`: the cell structure is fixed, so after the first step no
    host-to-device copy happens (which also keeps the step capturable in a CUDA graph)."""
    key = ("index", values, str(device))
    t = _index_cache.get(key)
    if t is None:
        t = _index_cache[key] = torch.tensor(values, dtype=torch.int64, device=device)
    return t


def _device_mask(true_at: Tuple[int, ...], size: int, device: torch.device) -> Tensor:
    key = ("mask", true_at, size, str(device))
    t = _index_cache.get(key)
    if t is None:
        t = torch.zeros(size, dtype=torch.bool)
        t[list(true_at)] = True
        t = _index_cache[key] = t.to(device)
    return t


def _term_value(t: _Term, tensors: Sequence[Tensor]) -> Tensor:
    return t.pool.value(tensors[t.src]) if t.kind == "pool" else tensors[t.src]


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _MixedNode(torch.autograd.Function):
    """node = sum over terms of weights[row, col] * normalize(z_term) (see module docstring)."""

    @staticmethod
    def forward(ctx, spec: _NodeSpec, weights: Tensor, *tensors: Tensor) -> Tensor:
        terms = spec.terms
        dtype = _common_dtype(tensors)
        zs = [_term_value(t, tensors).to(dtype) for t in terms]
        K, C = len(terms), zs[0].shape[1]
        dev = zs[0].device
        stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        mu = zs[0].new_zeros((K, C), dtype=stat_dtype)
        rstd = zs[0].new_ones((K, C), dtype=stat_dtype)
        batch = tuple(k for k, t in enumerate(terms) if t.bn is not None and _uses_batch_stats(t.bn))
        fixed = tuple(k for k, t in enumerate(terms) if t.bn is not None and not _uses_batch_stats(t.bn))
        if batch:
            mean, var = channel_moments([zs[k] for k in batch])
            eps = {terms[k].bn.eps for k in batch}
            if len(eps) != 1:
                raise FusedCellError("fused node: the BatchNorms of one node must share eps")
            index = _device_index(batch, dev)
            mu[index] = mean
            rstd[index] = torch.rsqrt(var + eps.pop())
            _update_running_stats([terms[k].bn for k in batch], mean, var, zs[0].numel() // C)
        if fixed:
            index = _device_index(fixed, dev)
            mu[index] = torch.stack([terms[k].bn.running_mean.to(stat_dtype) for k in fixed])
            rstd[index] = torch.stack([torch.rsqrt(terms[k].bn.running_var.to(stat_dtype) + terms[k].bn.eps)
                                       for k in fixed])
        rows = _device_index(tuple(t.row for t in terms), weights.device)
        cols = _device_index(tuple(t.col for t in terms), weights.device)
        a = weights.detach()[rows, cols].to(stat_dtype).clone()
        scale = a[:, None] * rstd
        bias = -(scale * mu).sum(0)
        out = channel_weighted_sum(zs, scale, bias)

        ctx.spec_terms = terms
        ctx.dtype = dtype
        ctx.weights_shape = weights.shape
        ctx.batch_terms = batch
        ctx.save_for_backward(a, mu, rstd, rows, cols, *tensors)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, mu, rstd, rows, cols, *tensors = ctx.saved_tensors
        terms: List[_Term] = ctx.spec_terms
        dtype = ctx.dtype
        g = grad.to(dtype).contiguous()
        zs = [_term_value(t, tensors).to(dtype) for t in terms]
        sg, sgz = channel_dot_sums(g, zs)
        count = g.numel() // g.shape[1]
        sgxhat = rstd * (sgz - mu * sg[None, :])               # <grad, normalised term> per channel
        grad_a = sgxhat.sum(1)
        batch = _device_mask(ctx.batch_terms, len(terms), a.device)[:, None]
        coef_g = a[:, None] * rstd
        coef_z = torch.where(batch, -coef_g * rstd * sgxhat / count, torch.zeros_like(coef_g))
        coef_c = torch.where(batch, -coef_g * sg[None, :] / count - coef_z * mu, torch.zeros_like(coef_g))

        grads: List[Optional[Tensor]] = [None] * len(tensors)
        needs = ctx.needs_input_grad[2:]

        def add(i: int, value: Tensor) -> None:
            grads[i] = value if grads[i] is None else grads[i] + value

        # The gradients of all normalised terms in one kernel call; identity terms scale the incoming gradient.
        direct = [k for k, t in enumerate(terms) if t.kind != "id" and needs[t.src]]
        if direct:
            sel = _device_index(tuple(direct), a.device)
            dz = channel_affine_combine(g, [zs[k] for k in direct], coef_g[sel], coef_z[sel], coef_c[sel])
            for k, d in zip(direct, dz):
                t = terms[k]
                if t.kind == "z":
                    add(t.src, d)
                elif t.owner:
                    add(t.src, t.pool.backward(d, tensors[t.src]))
                else:
                    t.pool.deposit(d)
        del zs
        for k, t in enumerate(terms):
            if t.kind == "id" and needs[t.src]:
                add(t.src, g * coef_g[k].view(1, -1, 1, 1).to(dtype))
            elif t.kind == "pool" and t.owner and not needs[t.src]:
                t.pool.release()
        grads = [None if d is None else d.to(x.dtype) for d, x in zip(grads, tensors)]

        grad_weights = None
        if ctx.needs_input_grad[1]:
            grad_weights = torch.zeros(ctx.weights_shape, dtype=grad_a.dtype, device=grad_a.device)
            grad_weights.index_put_((rows, cols), grad_a, accumulate=True)
        return (None, grad_weights, *grads)


def _update_running_stats(bns: Sequence[nn.BatchNorm2d], mean: Tensor, var: Tensor, count: int) -> None:
    """The running-statistics update nn.BatchNorm2d does in training mode (unbiased variance)."""
    tracked = [(k, b) for k, b in enumerate(bns) if b.running_mean is not None]
    if not tracked:
        return
    with torch.no_grad():
        unbiased = var * (count / max(count - 1, 1))
        by_factor: Dict[float, List[Tuple[int, nn.BatchNorm2d]]] = {}
        for k, b in tracked:
            by_factor.setdefault(_count_batch(b), []).append((k, b))
        for factor, group in by_factor.items():
            # A cached device index: indexing with a Python list would copy it host-to-device on every call
            # (a sync per node, and an error under CUDA-graph capture).
            idx = _device_index(tuple(k for k, _ in group), mean.device)
            torch._foreach_lerp_([b.running_mean for _, b in group],
                                 [m.to(b.running_mean.dtype) for m, (_, b) in zip(mean[idx], group)], factor)
            torch._foreach_lerp_([b.running_var for _, b in group],
                                 [v.to(b.running_var.dtype) for v, (_, b) in zip(unbiased[idx], group)], factor)


# --------------------------------------------------------------------------------------------------------------
# Convolutional branches of all edges reading one node
# --------------------------------------------------------------------------------------------------------------
def _grouped_pointwise(x: Tensor, weight: Tensor) -> Tensor:
    """E pointwise convolutions at once: x [N, E*Ci, H, W], weight [E, Co, Ci] -> [N, E*Co, H, W]."""
    N, _, H, W = x.shape
    E, Co, Ci = weight.shape
    y = torch.matmul(weight, x.reshape(N, E, Ci, H * W))
    return y.reshape(N, E * Co, H, W)


def _stack_pointwise(convs: Sequence[nn.Conv2d]) -> Tensor:
    return torch.stack([c.weight.reshape(c.weight.shape[0], c.weight.shape[1]) for c in convs])


def _conv_branches(r: Tensor, edges: Sequence[nn.Module], stride: int) -> List[Dict[str, Tuple[Tensor, nn.Module]]]:
    """Pre-BN outputs of the 4 convolutional candidates (and the strided skip) of every edge in `edges`, all
    reading `r` = relu(node). Returns, per edge, {primitive: (pre-BN tensor, its final BatchNorm)}."""
    E = len(edges)
    out: List[Dict[str, Tuple[Tensor, nn.Module]]] = [dict() for _ in range(E)]
    for prim in _CONV_PRIMITIVES:
        mods = [e._ops[_COL[prim]].op for e in edges]
        dw = mods[0][1]
        w = torch.cat([m[1].weight for m in mods]) if E > 1 else mods[0][1].weight
        y = dw_conv2d(r, w, stride, dw.padding, dw.dilation)
        y = _grouped_pointwise(y, _stack_pointwise([m[2] for m in mods]))
        if prim.startswith("sep"):
            y = F.relu(_batch_norm_group(y, [m[3] for m in mods]), inplace=True)
            dw2 = mods[0][5]
            w2 = torch.cat([m[5].weight for m in mods]) if E > 1 else mods[0][5].weight
            y = dw_conv2d(y, w2, 1, dw2.padding, dw2.dilation)
            y = _grouped_pointwise(y, _stack_pointwise([m[6] for m in mods]))
            final_bn = [m[7] for m in mods]
        else:
            final_bn = [m[3] for m in mods]
        for e, part in enumerate(y.split(y.shape[1] // E, dim=1)):
            out[e][prim] = (part, final_bn[e])
    skips = [e._ops[_COL["skip_connect"]] for e in edges]
    if isinstance(skips[0], FactorizedReduce):
        # conv_1 reads r[2h, 2w], conv_2 reads r[2h+1, 2w+1]: together one 2x2 stride-2 conv whose kernel has
        # conv_1's weights at tap (0, 0) and conv_2's at tap (1, 1); odd sizes are zero-padded at the end like
        # the reference's shifted branch.
        kernels = []
        for s in skips:
            kernels.append(F.pad(s.conv_1.weight, (0, 1, 0, 1)))
            kernels.append(F.pad(s.conv_2.weight, (1, 0, 1, 0)))
        H, W = r.shape[2], r.shape[3]
        rp = F.pad(r, (0, W % 2, 0, H % 2)) if (H % 2 or W % 2) else r
        y = F.conv2d(rp, torch.cat(kernels), stride=2)
        for e, part in enumerate(y.split(y.shape[1] // E, dim=1)):
            out[e]["skip_connect"] = (part, skips[e].bn)
    return out


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------
_checked_cells: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def _check_cell(cell: nn.Module) -> None:
    if cell in _checked_cells:
        return
    for e, mixed in enumerate(cell._ops):
        ops = getattr(mixed, "_ops", None)
        if ops is None or len(ops) != len(PRIMITIVES):
            raise FusedCellError(f"fused cell: edge {e} is not a mixed op over the {len(PRIMITIVES)} PRIMITIVES")
        for prim, op in zip(PRIMITIVES, ops):
            if not isinstance(op, _EXPECTED[prim]):
                raise FusedCellError(f"fused cell: edge {e} candidate {prim} is a {type(op).__name__}, expected "
                                     f"{' or '.join(t.__name__ for t in _EXPECTED[prim])}")
            if prim in _POOL_PRIMITIVES and not (len(op) == 2 and isinstance(op[1], nn.BatchNorm2d)
                                                 and isinstance(op[0], (nn.MaxPool2d, nn.AvgPool2d))):
                raise FusedCellError(f"fused cell: edge {e} candidate {prim} must be Sequential(pool, BatchNorm2d)")
            if prim in _POOL_PRIMITIVES and not _darts_pool(op[0]):
                raise FusedCellError(f"fused cell: edge {e} candidate {prim} is {op[0]}; the fused cell implements "
                                     "floor-mode, undilated pooling (average without the padding in the divisor)")
            if prim in _CONV_PRIMITIVES:
                bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
                if any(b.affine for b in bns):
                    raise FusedCellError(f"fused cell: edge {e} candidate {prim} uses affine BatchNorm; the "
                                         "search cells' candidates are affine-free")
    _checked_cells.add(cell)


def _darts_pool(module: nn.Module) -> bool:
    if module.ceil_mode:
        return False
    if isinstance(module, nn.MaxPool2d):
        return module.dilation in (1, (1, 1))
    return not module.count_include_pad and module.divisor_override is None


def _edge_index(steps: int) -> List[List[int]]:
    """edge_of[i][j]: the edge index feeding node i from state j."""
    edge_of, offset = [], 0
    for i in range(steps):
        edge_of.append([offset + j for j in range(2 + i)])
        offset += 2 + i
    return edge_of


def _fused_cell(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor,
                edge_weights: Optional[Tensor] = None) -> Tensor:
    _check_cell(cell)
    steps, multiplier = cell._steps, cell._multiplier
    if weights.shape[0] != len(cell._ops):
        raise ValueError(f"fused cell: weights has {weights.shape[0]} rows, the cell has {len(cell._ops)} edges")
    partial = edge_weights is not None
    k_pc = cell._ops[0].k if partial else 1
    if partial:
        # PC-DARTS: the mixed op of an edge sees the first C/k channels; its candidate weights are scaled by
        # the edge's normalised beta, and the bypassed channels are summed separately (see pc_cell_forward).
        weights = weights * edge_weights[:, None]
    states = [cell.preprocess0(s0).contiguous(), cell.preprocess1(s1).contiguous()]
    edge_of = _edge_index(steps)
    branches: Dict[int, Dict[str, Tuple[Tensor, nn.Module]]] = {}
    pools: Dict[Tuple, _SharedPool] = {}

    def pool(j: int, prim: str, module: nn.Module) -> Tuple[_SharedPool, bool]:
        """The shared pooling of state j for this candidate, and whether the calling node is its owner (the
        first node that reads state j)."""
        key = (j, prim, module.stride)
        if key not in pools:
            pools[key] = _SharedPool(module)
            return pools[key], True
        return pools[key], False

    def expand(j: int) -> None:
        """Convolutional branches of every edge reading state j."""
        readers = [edge_of[i][j] for i in range(steps) if j < 2 + i]
        if not readers:
            return
        h = _active(states[j])
        r = F.relu(h)
        stride = cell._ops[readers[0]].stride
        for e, b in zip(readers, _conv_branches(r, [cell._ops[e] for e in readers], stride)):
            branches[e] = b

    def _active(h: Tensor) -> Tensor:
        return h[:, : h.shape[1] // k_pc] if partial else h

    expand(0)
    expand(1)
    for i in range(steps):
        tensors: List[Tensor] = []
        slot: Dict[int, int] = {}

        def slot_of(t: Tensor) -> int:
            if id(t) not in slot:
                slot[id(t)] = len(tensors)
                tensors.append(t)
            return slot[id(t)]

        terms: List[_Term] = []
        for j, e in enumerate(edge_of[i]):
            mixed = cell._ops[e]
            h = _active(states[j])
            for prim in _POOL_PRIMITIVES:
                seq = mixed._ops[_COL[prim]]
                shared, owner = pool(j, prim, seq[0])
                terms.append(_Term("pool", slot_of(h), e, _COL[prim], bn=seq[1], pool=shared, owner=owner))
            for prim, (z, bn) in branches.pop(e).items():
                terms.append(_Term("z", slot_of(z), e, _COL[prim], bn=bn))
            if isinstance(mixed._ops[_COL["skip_connect"]], Identity):
                terms.append(_Term("id", slot_of(h), e, _COL["skip_connect"]))
        node = _MixedNode.apply(_NodeSpec(terms), weights, *tensors)
        if partial:
            node = _pc_combine(cell, node, [states[j] for j in range(2 + i)], edge_of[i], edge_weights, k_pc)
        states.append(node)
        if i + 1 < steps:
            expand(2 + i)
    for shared in pools.values():  # pooled tensors are recomputed in the backward, not kept
        shared.release()
    return torch.cat(states[-multiplier:], dim=1)


def _pc_combine(cell, mixed_sum: Tensor, inputs: Sequence[Tensor], edges: Sequence[int], edge_weights: Tensor,
                k: int) -> Tensor:
    """PC-DARTS node from the (beta-weighted) sum of the mixed parts: add the beta-weighted bypassed channels
    (max-pooled 2x2 on strided edges), then shuffle channels like each edge's output (a linear permutation,
    so shuffling the sum equals summing the shuffled edges)."""
    bypass = None
    for h, e in zip(inputs, edges):
        mixed = cell._ops[e]
        part = h[:, h.shape[1] // k:]
        if mixed.stride != 1:
            part = mixed.mp(part)
        term = edge_weights[e] * part
        bypass = term if bypass is None else bypass + term
    return channel_shuffle(torch.cat([mixed_sum, bypass.to(mixed_sum.dtype)], dim=1), k)


def cell_forward(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
    """Fused DARTS cell: same output, gradients (weights, alphas) and BN running statistics as
    `cell.reference_forward(s0, s1, weights)`; `weights` is the cell type's softmaxed alphas [edges, ops]."""
    return _fused_cell(cell, s0, s1, weights)


def pc_cell_forward(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor, edge_weights: Tensor) -> Tensor:
    """Fused PC-DARTS cell (partial channels, edge normalisation); `edge_weights` are the normalised betas."""
    return _fused_cell(cell, s0, s1, weights, edge_weights)
