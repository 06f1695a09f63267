"""The convolutional candidates of all edges that read one state, run together.

The depthwise convolutions of one candidate type on the E edges reading a state are one depthwise convolution
with channel multiplier E, the pointwise ones one grouped 1x1 convolution (the last one giving each edge's output
as a tensor of its own), the separable convolutions' inner BatchNorms one call, and the stride-2
FactorizedReduce skips one 2x2 stride-2 convolution.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxynas_fast.ops.dw_conv2d import dw_conv2d
from proxynas_fast.ops.pw_conv2d import pw_conv2d, pw_conv2d_groups

from ..operations import FactorizedReduce
from .kernel_batch_norm import _batch_norm_group, _RunningStats
from .plan import _CONV_PRIMITIVES, _StateReaders

Tensor = torch.Tensor


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
            edge_outputs = _pointwise_per_edge(_grouped_depthwise(y, op[5], 1), op[6])
        else:
            edge_outputs = _pointwise_per_edge(y, op[2])
        for e, output in enumerate(edge_outputs):
            out[e].append(output)
    if readers.skips:
        for e, output in enumerate(_factorized_reduce_group(r, readers.skips)):
            out[e].append(output)
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
