"""The fused cell's forward: preprocessing, then node by node the convolutional branches of each new state and
the mixed node (with PC-DARTS's joins), and the running-statistics updates applied once at the end.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxynas_fast.ops.pw_conv2d import pw_conv2d

from ..operations import FactorizedReduce, ReLUConvBN
from .branches import _conv_branches, _factorized_reduce_group
from .kernel_batch_norm import _batch_norm_group, _RunningStats
from .mixed_node import _MixedNode, _SharedPool
from .pc_darts import _pc_combine, _split_state
from .plan import _CellPlan, cell_plan
from .relu_memo import shared_relu

Tensor = torch.Tensor


def _fused_cell(cell: nn.Module, s0: Tensor, s1: Tensor, op_weights: Tensor,
                edge_weights: Optional[Tensor] = None) -> Tensor:
    """The cell's output; `op_weights` [edges, candidates] are the softmaxed alphas (the architecture's weights of
    each edge's candidates), `edge_weights` PC-DARTS's normalised betas."""
    plan = cell_plan(cell)
    if op_weights.shape[0] != plan.num_edges:
        raise ValueError(f"fused cell: weights has {op_weights.shape[0]} rows, the cell has {plan.num_edges} edges")
    if edge_weights is not None:
        # PC-DARTS: the mixed op of an edge sees the first C/k channels; its candidate weights are scaled by
        # the edge's normalised beta, and the bypassed channels are summed separately (see _pc_combine).
        op_weights = op_weights * edge_weights[:, None]
    flat, indexes = plan.indexes(op_weights.device)
    a = op_weights.reshape(-1).index_select(0, flat)          # every node's candidate weights, in term order
    pools = [_SharedPool(is_max, args) for is_max, args in plan.pools]
    stats = _RunningStats()
    states = [_preprocess(cell.preprocess0, s0, stats).contiguous(),
              _preprocess(cell.preprocess1, s1, stats).contiguous()]
    splits = [_split_state(h, plan.pc_k) for h in states]
    branches: Dict[int, List[Tensor]] = {}
    bypass_pooled: Dict[Tuple, Tensor] = {}
    _run_branches_of_state(plan, splits, 0, branches, stats)
    _run_branches_of_state(plan, splits, 1, branches, stats)
    for i, (node, a_node) in enumerate(zip(plan.nodes, a.split(plan.term_counts))):
        tensors = [splits[s][0] if k < 0 else branches[s][k] for s, k in node.sources]
        for e in node.edges:
            del branches[e]
        h = _MixedNode.apply(a_node, *tensors, (node, indexes[i], pools, stats))
        if edge_weights is not None and plan.pc_k > 1:  # k = 1: no bypassed channels, the shuffle is the identity
            h = _pc_combine(plan, h, splits, node.edges, edge_weights, bypass_pooled)
        states.append(h)
        splits.append(_split_state(h, plan.pc_k))
        _run_branches_of_state(plan, splits, 2 + i, branches, stats)
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
            # both convolutions as one 2x2 stride-2 convolution: no slice of the input and no cat of the outputs,
            # so the backward needs no zero-filled input gradient and no contiguous copies of the outputs'
            (y,) = _factorized_reduce_group(shared_relu(x), [module])
        else:
            y = module.before_bn(x)
        return _batch_norm_group(y, [module.bn], stats)
    return module(x)


def _plain_1x1(conv: nn.Module, stride: int = 1) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (stride, stride)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None
            and conv.padding_mode == "zeros")


def _run_branches_of_state(plan: _CellPlan, splits: Sequence[Tuple[Tensor, Optional[Tensor]]], j: int,
            branches: Dict[int, List[Tensor]], stats: _RunningStats) -> None:
    """Convolutional branches of every edge reading state j."""
    readers = plan.readers[j]
    if readers.edges:
        branches.update(zip(readers.edges, _conv_branches(F.relu(splits[j][0]), readers, stats)))


def cell_forward(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
    """Fused DARTS cell: same output, gradients (weights, alphas) and BN running statistics as
    `cell.reference_forward(s0, s1, weights)`; `weights` is the cell type's softmaxed alphas [edges, ops]."""
    return _fused_cell(cell, s0, s1, weights)


def pc_cell_forward(cell: nn.Module, s0: Tensor, s1: Tensor, weights: Tensor, edge_weights: Tensor) -> Tensor:
    """Fused PC-DARTS cell (partial channels, edge normalisation); `edge_weights` are the normalised betas."""
    return _fused_cell(cell, s0, s1, weights, edge_weights)
