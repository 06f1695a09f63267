"""PC-DARTS (Xu et al., 2020): partial channel connections and edge normalisation.

Differences from the DARTS supernet (layout otherwise identical, so the reference PC-DARTS checkpoints load):

* Partial channels: on every edge only the first C/K channels go through the mixed operation (whose candidate
  ops are built for C/K channels); the other channels bypass it, unchanged on stride-1 edges and through a 2x2
  max-pool (`mp`) on stride-2 edges so that they match the halved resolution. The two parts are concatenated
  and channel-shuffled with K groups, so a different channel subset is sampled by the next edge.
* Edge normalisation: extra architecture weights `betas_normal` / `betas_reduce` (one per edge). The betas of
  the edges entering one node are softmax-normalised together, and each edge's output is multiplied by its
  normalised beta before the node sums its inputs.
* Genotype: an edge's strength is its op weight softmax(alpha) times its normalised beta; edges and ops are then
  picked as in DARTS.

K is 4 for CIFAR and 2 for the ImageNet search (the reference code's values).
"""
from __future__ import annotations

import functools
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architect import SearchHyperparameters
from .genotypes import PRIMITIVES
from .model_search import CELL_BACKENDS, Cell, Network, num_edges
from .operations import OPS, channel_shuffle  # channel_shuffle: re-exported (public name of this module)

PCDARTS_CIFAR_K = 4
PCDARTS_IMAGENET_K = 2

# PC-DARTS CIFAR-10 search: larger batch (partial channels save memory) and a larger architecture learning
# rate; alpha/beta updates start after 15 warm-up epochs of weight training.
PCDARTS_CIFAR_SEARCH = SearchHyperparameters(
    batch_size=256, learning_rate=0.1, learning_rate_min=0.001, momentum=0.9, weight_decay=3e-4, epochs=50,
    init_channels=16, layers=8, grad_clip=5.0, arch_learning_rate=6e-4, arch_weight_decay=1e-3,
    arch_begin_epoch=15,
)

# PC-DARTS ImageNet search: 10% of the training images train the weights and 2.5% the architecture
# (train_portion 0.8 of that 12.5%), 5 warm-up epochs, architecture updates from epoch 35.
PCDARTS_IMAGENET_SEARCH = SearchHyperparameters(
    batch_size=1024, learning_rate=0.5, learning_rate_min=0.0, momentum=0.9, weight_decay=3e-4, epochs=50,
    init_channels=16, layers=8, grad_clip=5.0, arch_learning_rate=6e-3, arch_weight_decay=1e-3,
    arch_begin_epoch=35, warmup_epochs=5, train_portion=0.8,
)


def edge_normalization(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of the betas over the incoming edges of each node (2, 3, 4, ... edges), concatenated."""
    parts, start = [], 0
    for i in range(steps):
        parts.append(F.softmax(betas[start:start + 2 + i], dim=-1))
        start += 2 + i
    return torch.cat(parts)


class PCMixedOp(nn.Module):
    """Mixed operation on the first C/k channels; the rest bypass it (max-pooled when the edge strides)."""

    def __init__(self, C: int, stride: int, k: int = PCDARTS_CIFAR_K):
        super().__init__()
        if C % k != 0:
            raise ValueError(f"partial-channel factor k={k} must divide the edge's channel count C={C}")
        self.k = k
        self.stride = stride
        self.mp = nn.MaxPool2d(2, 2)
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C // k, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C // k, affine=False))
            self._ops.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        active_channels = x.shape[1] // self.k
        active, bypass = x[:, :active_channels], x[:, active_channels:]
        mixed = sum(w * op(active) for w, op in zip(weights, self._ops))
        if self.stride != 1:
            bypass = self.mp(bypass)
        return channel_shuffle(torch.cat([mixed, bypass], dim=1), self.k)


class PCCell(Cell):
    """A search cell of PC-DARTS: partial-channel edges whose outputs are scaled by the edge weights."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 k: int = PCDARTS_CIFAR_K):
        super().__init__(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                         mixed_op=functools.partial(PCMixedOp, k=k))

    def forward(self, s0, s1, weights, edge_weights):
        return CELL_BACKENDS.get(self.backend).pc_cell_forward(self, s0, s1, weights, edge_weights)

    def reference_forward(self, s0, s1, weights, edge_weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            node = sum(edge_weights[offset + j] * self._ops[offset + j](h, weights[offset + j])
                       for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self._multiplier:], dim=1)


class PCNetwork(Network):
    """PC-DARTS search network for 32x32 images; as `Network` plus the partial-channel factor `k` and the
    edge-normalisation weights `betas_normal` / `betas_reduce`."""

    def __init__(self, C: int, num_classes: int, layers: int, criterion: Optional[nn.Module] = None,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, k: int = PCDARTS_CIFAR_K,
                 backend: str = "auto"):
        if int(k) < 1:
            raise ValueError(f"partial-channel factor k must be a positive integer, got {k!r}")
        # Needed by _make_cell, which the base constructor calls.
        object.__setattr__(self, "_k", int(k))
        super().__init__(C, num_classes, layers, criterion, steps=steps, multiplier=multiplier,
                         stem_multiplier=stem_multiplier, backend=backend)

    def _make_cell(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev) -> PCCell:
        return PCCell(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, k=self._k)

    def _config(self) -> Dict:
        return dict(super()._config(), k=self._k)

    def _initialize_alphas(self) -> None:
        super()._initialize_alphas()
        k = num_edges(self._steps)
        self._register_arch("betas_normal", (k,))
        self._register_arch("betas_reduce", (k,))

    def edge_weights(self):
        """Normalised betas (normal, reduce), each of shape [edges]."""
        return (edge_normalization(self.betas_normal, self._steps),
                edge_normalization(self.betas_reduce, self._steps))

    def _cell_weights(self):
        normal_edges, reduce_edges = self.edge_weights()
        return {False: (F.softmax(self.alphas_normal, dim=-1), normal_edges),
                True: (F.softmax(self.alphas_reduce, dim=-1), reduce_edges)}

    def _genotype_weights(self):
        normal_edges, reduce_edges = self.edge_weights()
        return (F.softmax(self.alphas_normal, dim=-1) * normal_edges[:, None],
                F.softmax(self.alphas_reduce, dim=-1) * reduce_edges[:, None])
