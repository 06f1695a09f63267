"""Fused evaluation of DARTS / PC-DARTS search cells (`backend="fused"`).

Computes exactly the function of `Cell.reference_forward` (and `PCCell.reference_forward`) from the cell's own
modules, so parameters, buffers and the state_dict are shared with the reference path; forward and backward,
in training mode (batch-statistics BatchNorm, running statistics updated like nn.BatchNorm2d) and in eval mode.

What is fused, relative to the reference (which evaluates 8 ops on each of the 14 edges independently):

* one ReLU per node, shared by the 4 convolutional candidates (and the FactorizedReduce skip) of every edge that
  reads the node (the reference applies 4-5 ReLUs per edge); one per cell output, shared by the preprocessings
  of the two cells that read it (`shared_relus`, opened by the network's forward); the ReLU after a BatchNorm
  (the separable convolutions' inner one, the ImageNet stem's) folded into the kernel BatchNorm;
* the depthwise convolutions of one candidate type on all E edges that read the same node run as one depthwise
  convolution with channel multiplier E (`proxynas_fast.ops.dw_conv2d`, a fast CPU kernel), the pointwise
  convolutions as one grouped 1x1 convolution (`proxynas_fast.ops.pw_conv2d`: a CPU kernel, torch.matmul
  elsewhere; the last one of a candidate gives each edge's output as a tensor of its own, `pw_conv2d_groups`, so
  that the backward joins no per-edge gradients), the inner BatchNorm of the separable convolutions as one call;
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

import contextlib
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_mod

from proxynas_fast import extension
from proxynas_fast.ops._args import inputs_needing_grad
from proxynas_fast.ops.dw_conv2d import dw_conv2d
from proxynas_fast.ops.mixed_node import (channel_affine_combine, channel_dot_sums, channel_moments,
                                          channel_weighted_sum, rows_layout)
from proxynas_fast.ops.pool2d import pool2d, pool2d_backward
from proxynas_fast.ops.pw_conv2d import pw_conv2d, pw_conv2d_groups

from .genotypes import PRIMITIVES
from .operations import DilConv, FactorizedReduce, Identity, ReLUConvBN, SepConv, Zero

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
    (NCHW) or in channels_last (read in place; output and gradient in channels_last too). On CPU, aten's
    batch_norm takes 2-6x longer at the cells' sizes (forward, 1 thread: 1.07 vs 0.22 ms at [32, 32, 28, 28],
    2.87 vs 0.46 ms at [64, 32, 32, 32]), and its channels_last backward ~2.5x longer at the ImageNet stem's
    [32, 24, 112, 112] (docs/PERFORMANCE.md)."""

    @staticmethod
    def forward(ctx, y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, relu: bool = False):
        mean, var = channel_moments([y])
        mu, var = mean[0], var[0]
        rstd = torch.rsqrt(var + eps)
        scale = rstd if weight is None else _as(weight, rstd.dtype) * rstd
        shift = -scale * mu if bias is None else _as(bias, rstd.dtype) - scale * mu
        out = channel_weighted_sum([y], scale[None], shift, relu)
        ctx.save_for_backward(y, mu, rstd, scale, shift)
        ctx.relu = relu
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(mu, var)
        return out, mu, var

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_mean, _grad_var):
        y, mu, rstd, scale, shift = ctx.saved_tensors
        g = _as(grad, y.dtype)
        g = g.contiguous(memory_format=torch.channels_last) if rows_layout(y) else g.contiguous()
        gate = torch.stack([scale, shift]) if ctx.relu else None  # the output's sign, as the forward rounded it
        sg, sgz = channel_dot_sums(g, [y], gate)
        sgxhat, coef_z, coef_c = _bn_grad_coefficients(scale, rstd, mu, sg, sgz[0], g.numel() // g.shape[1])
        dy = None
        if ctx.needs_input_grad[0]:
            (dy,) = channel_affine_combine(g, [y], scale[None], coef_z[None], coef_c[None], gate)
        weight_dtype, bias_dtype = ctx.param_dtypes
        dweight = _as(sgxhat, weight_dtype) if weight_dtype is not None and ctx.needs_input_grad[1] else None
        dbias = _as(sg, bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] else None
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


# --------------------------------------------------------------------------------------------------------------
# One ReLU per tensor within a network's forward
# --------------------------------------------------------------------------------------------------------------
_RELU_MEMO: contextvars.ContextVar[Optional[Dict[int, Tuple[Tensor, int, bool, Tensor]]]] = \
    contextvars.ContextVar("proxynas_fast_relu_memo", default=None)


@contextlib.contextmanager
def shared_relus() -> Iterator[None]:
    """Within it, `shared_relu(x)` computes relu(x) once per tensor: a cell's output is read by the next two
    cells' preprocessings, and each starts with a ReLU (the ImageNet stem0's output also by stem1's ReLU). One
    ReLU, one tensor kept for backward and one gradient pass instead of two. The network's forward opens it
    (`Network.forward`, fused backend); it holds its tensors until it closes."""
    token = _RELU_MEMO.set({})
    try:
        yield
    finally:
        _RELU_MEMO.reset(token)


def shared_relu(x: Tensor) -> Tensor:
    """relu(x), computed once per tensor x inside `shared_relus` (again if x was changed in place since, or the
    grad mode differs), else every call."""
    memo = _RELU_MEMO.get()
    if memo is None or x.is_inference():  # inference tensors have no version counter
        return F.relu(x)
    grad_mode = torch.is_grad_enabled()
    hit = memo.get(id(x))
    if hit is not None and hit[0] is x and hit[1] == x._version and hit[2] == grad_mode:
        return hit[3]
    r = F.relu(x)
    memo[id(x)] = (x, x._version, grad_mode, r)  # x kept: its id is not reused while the memo lives
    return r


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(modules: Sequence[nn.Module]) -> bool:
    """Whether calling these modules would run a hook (theirs or a global one)."""
    if any(getattr(_module_mod, "_global" + name, None) for name in _HOOK_DICTS):
        return True
    return any(getattr(m, name, None) for m in modules for name in _HOOK_DICTS)


def run_sequential(seq: nn.Sequential, x: Tensor) -> Tensor:
    """`seq(x)` with its BatchNorm2d modules run by `batch_norm`, a ReLU right after one folded into it, any other
    out-of-place ReLU by `shared_relu` (the fused backend's stems). With a hook on the Sequential or a child (or a
    global module hook), `seq(x)` itself, so that every hook runs as it would."""
    modules = list(seq)
    if _hooked([seq, *modules]):
        return seq(x)
    i = 0
    while i < len(modules):
        module = modules[i]
        if type(module) is nn.BatchNorm2d:
            relu = i + 1 < len(modules) and type(modules[i + 1]) is nn.ReLU
            x = batch_norm(x, module, relu)
            i += 2 if relu else 1
        elif type(module) is nn.ReLU and not module.inplace:
            x = shared_relu(x)
            i += 1
        else:
            x = module(x)
            i += 1
    return x


class _RunningStats:
    """The running-statistics updates (as nn.BatchNorm2d makes them in training mode) of the batch-statistics
    BatchNorms of one cell's forward, collected and applied together at its end: one counter bump and two lerps
    per momentum, instead of a set per BatchNorm group (~15 groups a cell). Nothing in the forward reads them
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
            torch._foreach_lerp_(running_means, [_as(means[k], r.dtype) for k, r in zip(group, running_means)],
                                 factor)
            torch._foreach_lerp_(running_vars, [_as(variances[k], r.dtype) for k, r in zip(group, running_vars)],
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


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """`t.to(dtype)` without the call when it would return `t` (a step makes hundreds of these)."""
    return t if t.dtype == dtype else t.to(dtype)


# --------------------------------------------------------------------------------------------------------------
# The cell plan: built once per cell from its modules, so that a step does only tensor work
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Term:
    """One candidate output in a node sum: kind "z" (a given pre-BN tensor), "pool" (the source pooled through
    the cell's shared pooling number `pool`, then normalised) or "id" (the source itself)."""

    kind: str
    src: int                      # index into the node's tensor inputs
    row: int                      # edge (row of the weights)
    col: int                      # candidate (column of the weights)
    bn: Optional[nn.BatchNorm2d] = None
    pool: int = -1                # index into the forward's shared pools (kind "pool")
    owner: bool = False           # this node runs the pooling backward (see _SharedPool)


@dataclass
class _StateReaders:
    """The edges reading one state, whose convolutional candidates run together (`_conv_branches`)."""

    edges: List[int]
    stride: int
    convs: Dict[str, List[List[nn.Module]]]  # per conv primitive and position i in its `.op`: op[i] of each edge
    skips: List[FactorizedReduce]           # the strided skips, empty when the skip is an identity


@dataclass
class _NodePlan:
    """One intermediate node: where its inputs come from and its terms (their weights are the node's slice of
    the cell's gathered weights)."""

    sources: List[Tuple[int, int]]          # per input: (state j, -1) or (edge e, k): output k of e's branches
    terms: List[_Term]
    edges: List[int]                        # edge of each incoming state, in state order
    identity: List[int] = field(default_factory=list)    # terms of kind "id" (set by `finish`)
    normalised: List[int] = field(default_factory=list)  # the others (their gradient comes from one kernel call)

    def finish(self) -> "_NodePlan":
        self.identity = [k for k, t in enumerate(self.terms) if t.kind == "id"]
        self.normalised = [k for k, t in enumerate(self.terms) if t.kind != "id"]
        return self


@dataclass
class _NodeIndex:
    """A node's device tensors for one set of BatchNorm modes."""

    batch: Tuple[int, ...]                  # terms normalised with batch statistics
    fixed: Tuple[int, ...]                  # terms normalised with running statistics
    batch_index: Optional[Tensor]
    fixed_index: Optional[Tensor]
    batch_mask: Tensor                      # [K, 1] bool
    normalised_index: Optional[Tensor]
    subsets: Dict[Tuple[int, ...], Tensor] = field(default_factory=dict)

    def subset(self, terms: Sequence[int], device: torch.device) -> Optional[Tensor]:
        """An index of some of the terms (when some inputs need no gradient), made once per subset."""
        key = tuple(terms)
        if key and key not in self.subsets:
            with torch.inference_mode(False):
                self.subsets[key] = torch.tensor(key, dtype=torch.int64, device=device)
        return self.subsets.get(key)


class _CellPlan:
    """Everything about a cell that does not change from step to step: the structure (checked once), the term
    layout of each node, the pooling each state shares, and, per (device, BatchNorm modes), the index tensors
    (made once, so a step makes no host-to-device copy). Kept on the cell as a plain attribute: not in the
    state_dict; a copy of the cell (deepcopy, pickle) gets no plan and builds its own."""

    def __init__(self, cell: nn.Module):
        _check_cell(cell)
        self.owner = weakref.ref(cell)  # a replica that copied the cell's __dict__ (nn.DataParallel) is not it
        self.steps, self.multiplier = cell._steps, cell._multiplier
        self.num_edges, self.num_cols = len(cell._ops), len(PRIMITIVES)
        self.pc_k = getattr(cell._ops[0], "k", 1)
        self.readers = [_state_readers(cell, j, self.steps) for j in range(self.steps + 2)]
        self.pools: List[Tuple[bool, Tuple]] = []
        self.nodes = self._plan_nodes(cell)
        self.term_bns = [t.bn for n in self.nodes for t in n.terms if t.bn is not None]
        self.term_counts = [len(n.terms) for n in self.nodes]
        # PC-DARTS: the 2x2 max-pool of the bypassed channels, per strided edge, and what it computes: edges whose
        # pools compute the same thing share one pooled tensor per state (4 nodes read each cell input)
        self.bypass_pools = {e: cell._ops[e].mp for e in range(self.num_edges) if cell._ops[e].stride != 1} \
            if self.pc_k > 1 else {}
        self.bypass_keys = {e: _pool_key(mp) for e, mp in self.bypass_pools.items()}
        self._indexes: Dict[Tuple, Tuple[Tensor, List[_NodeIndex]]] = {}

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return (type(None), ())

    def _plan_nodes(self, cell: nn.Module) -> List[_NodePlan]:
        owners: Dict[Tuple, int] = {}
        nodes = []
        for edges in _edge_index(self.steps):
            node = _NodePlan([], [], edges)
            for j, e in enumerate(edges):
                self._plan_edge(cell, node, j, e, owners)
            nodes.append(node.finish())
        return nodes

    def _plan_edge(self, cell: nn.Module, node: _NodePlan, j: int, e: int, owners: Dict[Tuple, int]) -> None:
        """The terms of edge e (reading state j), in the order of the former per-step assembly: the two
        poolings, the convolutional candidates (and the strided skip), the identity skip."""
        mixed = cell._ops[e]
        state_slot = len(node.sources)
        node.sources.append((j, -1))
        for prim in _POOL_PRIMITIVES:
            pool, bn = mixed._ops[_COL[prim]]
            key = (j, prim, pool.stride)
            owner = key not in owners
            if owner:
                owners[key] = len(self.pools)
                self.pools.append((isinstance(pool, nn.MaxPool2d), (pool.kernel_size, pool.stride, pool.padding)))
            node.terms.append(_Term("pool", state_slot, e, _COL[prim], bn=bn, pool=owners[key], owner=owner))
        branch_prims = list(_CONV_PRIMITIVES) + (["skip_connect"] if self.readers[j].skips else [])
        for k, prim in enumerate(branch_prims):
            node.sources.append((e, k))
            node.terms.append(_Term("z", len(node.sources) - 1, e, _COL[prim], bn=_final_bn(mixed, prim)))
        if isinstance(mixed._ops[_COL["skip_connect"]], Identity):
            node.terms.append(_Term("id", state_slot, e, _COL["skip_connect"]))

    def indexes(self, device: torch.device) -> Tuple[Tensor, List[_NodeIndex]]:
        """(flat index of every term's weight, per node index tensors) for `device` and the current BatchNorm
        modes; made on the first step in each (device, modes)."""
        modes = tuple(_uses_batch_stats(b) for b in self.term_bns)
        key = (device, modes)
        found = self._indexes.get(key)
        if found is None:
            with torch.inference_mode(False):  # kept across steps: never inference tensors, even if made in one
                found = self._indexes[key] = self._make_indexes(device, iter(modes))
        return found

    def _make_indexes(self, device: torch.device, modes: Iterator[bool]) -> Tuple[Tensor, List[_NodeIndex]]:
        flat = _index([t.row * self.num_cols + t.col for n in self.nodes for t in n.terms], device)
        per_node = [_node_index(node, [t.bn is not None and next(modes) for t in node.terms], device)
                    for node in self.nodes]
        return flat, per_node


def _index(values: Sequence[int], device: torch.device) -> Optional[Tensor]:
    return torch.tensor(values, dtype=torch.int64, device=device) if values else None


def _node_index(node: _NodePlan, batch_stats: Sequence[bool], device: torch.device) -> _NodeIndex:
    """A node's index tensors on `device`, where term k uses batch statistics iff batch_stats[k]."""
    batch = tuple(k for k, b in enumerate(batch_stats) if b)
    fixed = tuple(k for k, t in enumerate(node.terms) if t.bn is not None and not batch_stats[k])
    mask = torch.tensor(batch_stats, dtype=torch.bool, device=device)[:, None]
    return _NodeIndex(batch, fixed, _index(batch, device), _index(fixed, device), mask,
                      _index(node.normalised, device))


def _edge_index(steps: int) -> List[List[int]]:
    """edge_of[i][j]: the edge index feeding node i from state j."""
    edge_of, offset = [], 0
    for i in range(steps):
        edge_of.append([offset + j for j in range(2 + i)])
        offset += 2 + i
    return edge_of


def _state_readers(cell: nn.Module, j: int, steps: int) -> _StateReaders:
    edges = [row[j] for row in _edge_index(steps) if j < len(row)]
    mixed = [cell._ops[e] for e in edges]
    convs = {prim: [list(stage) for stage in zip(*(m._ops[_COL[prim]].op for m in mixed))]
             for prim in _CONV_PRIMITIVES}
    skips = [m._ops[_COL["skip_connect"]] for m in mixed]
    skips = skips if skips and isinstance(skips[0], FactorizedReduce) else []
    return _StateReaders(edges, mixed[0].stride if mixed else 1, convs, skips)


def _final_bn(mixed: nn.Module, prim: str) -> nn.BatchNorm2d:
    op = mixed._ops[_COL[prim]]
    if prim == "skip_connect":
        return op.bn
    return op.op[7] if prim.startswith("sep") else op.op[3]


def cell_plan(cell: nn.Module) -> _CellPlan:
    """The cell's plan, built on first use (see `_CellPlan`). A plan whose owner is another module (the cell's
    __dict__ was copied, as nn.DataParallel's replicas do) is not used: the replica builds its own, over its own
    modules. After replacing modules of a cell (e.g. `SyncBatchNorm.convert_sync_batchnorm`), call `drop_plan`."""
    plan = cell.__dict__.get("_fused_plan")
    if plan is None or plan.owner() is not cell:
        plan = _CellPlan(cell)
        object.__setattr__(cell, "_fused_plan", plan)
    return plan


def drop_plan(module: nn.Module) -> None:
    """Forget the plans of every cell in `module` (they are rebuilt on the next fused forward)."""
    for m in module.modules():
        m.__dict__.pop("_fused_plan", None)


# --------------------------------------------------------------------------------------------------------------
# The fused node
# --------------------------------------------------------------------------------------------------------------
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
        out = pool2d_backward(_as(grad, h.dtype), h, self.value(h), self.is_max, *self.args)
        self._value = self._grad = None
        return out


def _term_values(terms: Sequence[_Term], pools: Sequence[_SharedPool], tensors: Sequence[Tensor],
                 dtype: torch.dtype) -> List[Tensor]:
    return [_as(pools[t.pool].value(tensors[t.src]) if t.kind == "pool" else tensors[t.src], dtype) for t in terms]


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtypes = {t.dtype for t in tensors}
    dtype = dtypes.pop()
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    return dtype


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
        mu[index.fixed_index] = torch.stack([_as(b.running_mean, stat_dtype) for b in bns])
        rstd[index.fixed_index] = torch.stack([torch.rsqrt(_as(b.running_var, stat_dtype) + b.eps) for b in bns])
    return mu, rstd


class _MixedNode(torch.autograd.Function):
    """node = sum over terms of a[k] * normalize(z_k) (see module docstring); `a` holds the node's candidate
    weights, gathered for all nodes of the cell at once (`_fused_cell`)."""

    @staticmethod
    def forward(ctx, a: Tensor, *args) -> Tensor:
        *tensors, (node, index, pools, stats) = args  # tensors first: see inputs_needing_grad
        dtype = _common_dtype(tensors)
        zs = _term_values(node.terms, pools, tensors, dtype)
        stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        mu, rstd = _node_statistics(node, index, zs, stat_dtype, stats)
        a = _as(a.detach(), stat_dtype).clone()  # saved: must not alias the input (torch.compile refuses that)
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
        g = _as(grad, dtype).contiguous()
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
            add(terms[k].src, g * _as(coefs[0][k].view(1, -1, 1, 1), dtype))
    for t in terms:
        if t.kind == "pool" and t.owner and not needs[t.src]:
            pools[t.pool].release()
    return [None if d is None else _as(d, x.dtype) for d, x in zip(grads, tensors)]


# --------------------------------------------------------------------------------------------------------------
# Convolutional branches of all edges reading one state
# --------------------------------------------------------------------------------------------------------------
def _pointwise_weight(convs: Sequence[nn.Conv2d]) -> Tensor:
    """The E 1x1 convs' weights (Ci -> Co each) as one [E, Co, Ci] tensor for pw_conv2d / pw_conv2d_groups."""
    Co, Ci = convs[0].weight.shape[:2]
    return torch.stack([c.weight for c in convs]).view(len(convs), Co, Ci)


def _grouped_pointwise(x: Tensor, convs: Sequence[nn.Conv2d]) -> Tensor:
    """E pointwise convolutions at once: x [N, E*Ci, H, W], convs[e] a 1x1 conv Ci -> Co -> [N, E*Co, H, W]."""
    return pw_conv2d(x, _pointwise_weight(convs))


def _pointwise_per_edge(x: Tensor, convs: Sequence[nn.Conv2d]) -> List[Tensor]:
    """`_grouped_pointwise` with edge e's output [N, Co, H, W] a tensor of its own (each goes to another node:
    their gradients need no concatenation, `pw_conv2d_groups`)."""
    return pw_conv2d_groups(x, _pointwise_weight(convs))


def _grouped_depthwise(x: Tensor, convs: Sequence[nn.Conv2d], stride: int) -> Tensor:
    """E depthwise convolutions of the same x (one per edge), their outputs as E channel blocks."""
    weight = torch.cat([c.weight for c in convs]) if len(convs) > 1 else convs[0].weight
    return dw_conv2d(x, weight, stride, convs[0].padding, convs[0].dilation)


def _conv_branches(r: Tensor, readers: _StateReaders, stats: _RunningStats) -> List[List[Tensor]]:
    """Pre-BN outputs of the 4 convolutional candidates (and the strided skip) of every edge reading the state,
    all from `r` = relu(state): per edge, in the order sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5
    (, skip_connect)."""
    E = len(readers.edges)
    out: List[List[Tensor]] = [[] for _ in range(E)]
    for prim in _CONV_PRIMITIVES:
        op = readers.convs[prim]  # op[i]: the i-th module of the candidate's `.op`, of every edge
        y = _grouped_depthwise(r, op[1], readers.stride)
        if prim.startswith("sep"):
            y = _batch_norm_group(_grouped_pointwise(y, op[2]), op[3], stats, relu=True)
            parts = _pointwise_per_edge(_grouped_depthwise(y, op[5], 1), op[6])
        else:
            parts = _pointwise_per_edge(y, op[2])
        for e, part in enumerate(parts):
            out[e].append(part)
    if readers.skips:
        for e, part in enumerate(_factorized_reduce_group(r, readers.skips)):
            out[e].append(part)
    return out


def _factorized_reduce_group(r: Tensor, skips: Sequence[FactorizedReduce]) -> Tuple[Tensor, ...]:
    """The strided skips of all edges (pre-BN). conv_1 reads r[2h, 2w], conv_2 reads r[2h+1, 2w+1]: together one
    2x2 stride-2 conv whose kernel has conv_1's weights at tap (0, 0) and conv_2's at tap (1, 1); odd sizes are
    zero-padded at the end like the reference's shifted branch."""
    kernels = []
    for s in skips:
        kernels.append(F.pad(s.conv_1.weight, (0, 1, 0, 1)))
        kernels.append(F.pad(s.conv_2.weight, (1, 0, 1, 0)))
    H, W = r.shape[2], r.shape[3]
    rp = F.pad(r, (0, W % 2, 0, H % 2)) if (H % 2 or W % 2) else r
    y = F.conv2d(rp, torch.cat(kernels), stride=2)
    return y.split(y.shape[1] // len(skips), dim=1)


# --------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------
def _check_cell(cell: nn.Module) -> None:
    for e, mixed in enumerate(cell._ops):
        ops = getattr(mixed, "_ops", None)
        if ops is None or len(ops) != len(PRIMITIVES):
            raise FusedCellError(f"fused cell: edge {e} is not a mixed op over the {len(PRIMITIVES)} PRIMITIVES")
        for prim, op in zip(PRIMITIVES, ops):
            _check_candidate(e, prim, op)


def _check_candidate(e: int, prim: str, op: nn.Module) -> None:
    if not isinstance(op, _EXPECTED[prim]):
        raise FusedCellError(f"fused cell: edge {e} candidate {prim} is a {type(op).__name__}, expected "
                             f"{' or '.join(t.__name__ for t in _EXPECTED[prim])}")
    if prim in _POOL_PRIMITIVES and not (len(op) == 2 and isinstance(op[1], nn.BatchNorm2d)
                                         and isinstance(op[0], (nn.MaxPool2d, nn.AvgPool2d))):
        raise FusedCellError(f"fused cell: edge {e} candidate {prim} must be Sequential(pool, BatchNorm2d)")
    if prim in _POOL_PRIMITIVES and not _darts_pool(op[0]):
        raise FusedCellError(f"fused cell: edge {e} candidate {prim} is {op[0]}; the fused cell implements "
                             "floor-mode, undilated pooling (average without the padding in the divisor)")
    if prim in _CONV_PRIMITIVES and any(b.affine for b in op.modules() if isinstance(b, nn.BatchNorm2d)):
        raise FusedCellError(f"fused cell: edge {e} candidate {prim} uses affine BatchNorm; the search cells' "
                             "candidates are affine-free")


def _pool_key(module: nn.Module) -> Tuple:
    """What a pooling module computes: modules with equal keys give equal outputs for equal inputs."""
    return (type(module),) + tuple(repr(getattr(module, a, None)) for a in
                                   ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices",
                                    "count_include_pad", "divisor_override"))


def _darts_pool(module: nn.Module) -> bool:
    if module.ceil_mode:
        return False
    if isinstance(module, nn.MaxPool2d):
        return module.dilation in (1, (1, 1))
    return not module.count_include_pad and module.divisor_override is None


def _fused_cell(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor,
                edge_weights: Optional[Tensor] = None) -> Tensor:
    plan = cell_plan(cell)
    if weights.shape[0] != plan.num_edges:
        raise ValueError(f"fused cell: weights has {weights.shape[0]} rows, the cell has {plan.num_edges} edges")
    if edge_weights is not None:
        # PC-DARTS: the mixed op of an edge sees the first C/k channels; its candidate weights are scaled by
        # the edge's normalised beta, and the bypassed channels are summed separately (see _pc_combine).
        weights = weights * edge_weights[:, None]
    flat, indexes = plan.indexes(weights.device)
    a = weights.reshape(-1).index_select(0, flat)          # every node's candidate weights, in term order
    pools = [_SharedPool(is_max, args) for is_max, args in plan.pools]
    stats = _RunningStats()
    states = [_preprocess(cell.preprocess0, s0, stats).contiguous(),
              _preprocess(cell.preprocess1, s1, stats).contiguous()]
    parts = [_split_state(h, plan.pc_k) for h in states]
    branches: Dict[int, List[Tensor]] = {}
    bypass_pooled: Dict[Tuple, Tensor] = {}
    _expand(plan, parts, 0, branches, stats)
    _expand(plan, parts, 1, branches, stats)
    for i, (node, a_node) in enumerate(zip(plan.nodes, a.split(plan.term_counts))):
        tensors = [parts[s][0] if k < 0 else branches[s][k] for s, k in node.sources]
        for e in node.edges:
            del branches[e]
        h = _MixedNode.apply(a_node, *tensors, (node, indexes[i], pools, stats))
        if edge_weights is not None and plan.pc_k > 1:  # k = 1: no bypassed channels, the shuffle is the identity
            h = _pc_combine(plan, h, parts, node.edges, edge_weights, bypass_pooled)
        states.append(h)
        parts.append(_split_state(h, plan.pc_k))
        _expand(plan, parts, 2 + i, branches, stats)
    for shared in pools:  # pooled tensors are recomputed in the backward, not kept
        shared.release()
    stats.apply()
    return torch.cat(states[-plan.multiplier:], dim=1)


def _preprocess(module: nn.Module, x: Tensor, stats: Optional[_RunningStats] = None) -> Tensor:
    """A cell's input preprocessing, `module(x)`: for the search cells' ReLUConvBN 1x1 (on `pw_conv2d`) and
    FactorizedReduce, with affine-free BatchNorms, the BatchNorm runs through `_batch_norm_group` (on CPU, the
    mixed-node kernels; running statistics to `stats` when given), its ReLU by `shared_relu`; any other module
    runs as it is."""
    if isinstance(module, ReLUConvBN) and len(module.op) == 3:
        relu, conv, bn = module.op
        if (isinstance(relu, nn.ReLU) and _plain_1x1(conv) and isinstance(bn, nn.BatchNorm2d) and not bn.affine
                and type(bn) is nn.BatchNorm2d):
            y = pw_conv2d(shared_relu(x), conv.weight.view(1, conv.out_channels, conv.in_channels))
            return _batch_norm_group(y, [bn], stats)
    if isinstance(module, FactorizedReduce) and type(module.bn) is nn.BatchNorm2d and not module.bn.affine:
        if type(module).before_bn is FactorizedReduce.before_bn and type(module.relu) is nn.ReLU \
                and all(_plain_1x1(c, stride=2) for c in (module.conv_1, module.conv_2)):
            # both convolutions as one 2x2 stride-2 convolution: no slice of the input, no cat of the outputs
            # (their backward filled a zero tensor, copied the slice's gradient in and made each output gradient
            # contiguous: ~45 ms of the ImageNet step at 2 threads)
            (y,) = _factorized_reduce_group(shared_relu(x), [module])
        else:
            y = module.before_bn(x)
        return _batch_norm_group(y, [module.bn], stats)
    return module(x)


def _plain_1x1(conv: nn.Module, stride: int = 1) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (stride, stride)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros")


def _split_state(h: Tensor, k: int) -> Tuple[Tensor, Optional[Tensor]]:
    """(the channels the mixed ops see, the bypassed rest): PC-DARTS's first C/k channels and the others, as
    the two views of one split made once per state, so that the backward accumulates each part's gradient over
    its readers and joins the two once (per-use slices would each scatter into a zero-filled full-size
    gradient, then add those). Without partial channels, (h, None)."""
    if k == 1:
        return h, None
    active, rest = h.split([h.shape[1] // k, h.shape[1] - h.shape[1] // k], dim=1)
    return active, rest


def _expand(plan: _CellPlan, parts: Sequence[Tuple[Tensor, Optional[Tensor]]], j: int,
            branches: Dict[int, List[Tensor]], stats: _RunningStats) -> None:
    """Convolutional branches of every edge reading state j."""
    readers = plan.readers[j]
    if readers.edges:
        branches.update(zip(readers.edges, _conv_branches(F.relu(parts[j][0]), readers, stats)))


def _pc_combine(plan: _CellPlan, mixed_sum: Tensor, parts: Sequence[Tuple[Tensor, Optional[Tensor]]],
                edges: Sequence[int], edge_weights: Tensor, pooled: Dict[Tuple, Tensor]) -> Tensor:
    """PC-DARTS node from the (beta-weighted) sum of the mixed parts: add the beta-weighted bypassed channels
    (`parts[j][1]`: state j's channels after the first C/k; max-pooled 2x2 on strided edges, once per state:
    `pooled` keeps them over the cell's nodes), then shuffle channels like each edge's output (a linear
    permutation, so shuffling the sum equals summing the shuffled edges): `_ShuffledJoin`."""
    bypassed = []
    for j, ((_, part), e) in enumerate(zip(parts, edges)):
        if e in plan.bypass_pools:
            key = (j, plan.bypass_keys[e])
            if key not in pooled:
                pooled[key] = plan.bypass_pools[e](part)
            part = pooled[key]
        bypassed.append(part)
    betas = edge_weights.narrow(0, edges[0], len(edges))  # a node's edges are consecutive rows
    bypass = _ScaledSum.apply(betas, *bypassed)
    return _ShuffledJoin.apply(mixed_sum, _as(bypass, mixed_sum.dtype), plan.pc_k)


class _ShuffledJoin(torch.autograd.Function):
    """channel_shuffle(cat([mixed, bypass], dim=1), k) written in one pass (a cat, then the shuffle's copy, before);
    the backward gathers each input's gradient in one pass (the shuffle's copy, then a copy of each non-contiguous
    part, before). Output channel i*k + g is input channel g*c + i, c = mixed's channels (the first group)."""

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
    the backward d betas[k] = <grad, terms[k]> in one more; per term and edge, a scaled copy and an add (forward)
    and a product and a sum (backward) before. The terms are kept, not copied (they are the cell's states or their
    pooled bypass channels, which autograd keeps anyway)."""

    @staticmethod
    def forward(ctx, betas: Tensor, *terms: Tensor) -> Tensor:
        dtype = _common_dtype(terms)
        zs = [_as(t, dtype) for t in terms]
        C = zs[0].shape[1]
        stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        b = _as(betas.detach(), stat_dtype)
        out = channel_weighted_sum(zs, b[:, None].expand(len(zs), C), b.new_zeros(C))
        ctx.save_for_backward(betas, *terms)
        ctx.dtype = dtype
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        betas, *terms = ctx.saved_tensors
        g = _as(grad, ctx.dtype).contiguous()
        grad_betas = None
        if ctx.needs_input_grad[0]:
            _, sgz = channel_dot_sums(g, [_as(t, ctx.dtype) for t in terms])
            grad_betas = _as(sgz.sum(1), betas.dtype)
        grads = [_as(g * _as(betas[k], g.dtype), t.dtype) if ctx.needs_input_grad[1 + k] else None
                 for k, t in enumerate(terms)]
        return (grad_betas, *grads)


def cell_forward(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
    """Fused DARTS cell: same output, gradients (weights, alphas) and BN running statistics as
    `cell.reference_forward(s0, s1, weights)`; `weights` is the cell type's softmaxed alphas [edges, ops]."""
    return _fused_cell(cell, s0, s1, weights)


def pc_cell_forward(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor, edge_weights: Tensor) -> Tensor:
    """Fused PC-DARTS cell (partial channels, edge normalisation); `edge_weights` are the normalised betas."""
    return _fused_cell(cell, s0, s1, weights, edge_weights)
