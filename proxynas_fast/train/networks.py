"""Evaluation networks built from a searched cell (DARTS `NetworkCIFAR` / `NetworkImageNet`).

Module names follow the reference DARTS `model.py`, so state_dicts load in either direction:
`stem` (CIFAR) or `stem0`/`stem1` (ImageNet), `cells.<i>.preprocess0/1`, `cells.<i>._ops.<k>`,
`auxiliary_head.features/classifier`, `classifier`.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from proxynas_fast.darts.genotypes import Genotype
from proxynas_fast.darts.operations import OPS, FactorizedReduce, Identity, ReLUConvBN


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole examples of an op's output with probability `drop_prob`, rescaling the survivors.

    One Bernoulli draw per example (mask shape [B,1,1,1]), as in DARTS/NASNet "ScheduledDropPath".
    Out of place, so autograd never sees an in-place edit of a saved tensor.
    """
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask / keep_prob


class Cell(nn.Module):
    """A fixed cell: two preprocessed inputs, `len(ops)//2` nodes each summing two op outputs.

    In a reduction cell, edges reading one of the two cell inputs (index < 2) stride by 2.
    When the previous cell reduced, input 0 (two cells back) is at twice the resolution, so it is
    brought down with a FactorizedReduce instead of a 1x1 conv.
    """

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        if len(edges) % 2 != 0 or not edges:
            raise ValueError(f"a cell needs an even, non-zero number of edges, got {len(edges)}")
        op_names, indices = zip(*edges)
        self.reduction = reduction
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = list(indices)
        self._ops = nn.ModuleList()
        for name, index in zip(op_names, indices):
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for step in range(self._steps):
            node = None
            for k in (2 * step, 2 * step + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                # Identity edges are never dropped: like the shortcut in stochastic depth, the
                # unchanged input must survive so a dropped node still passes information on.
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = h if node is None else node + h
            states.append(node)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier on the 8x8 feature map (pool 5/3 -> 2x2, conv 2x2 -> 1x1)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier on the 7x7 map of a 224 input (pool 5/2 -> 2x2, conv 2x2 -> 1x1).

    The reference code has no BatchNorm after the 768-channel conv (a typo it kept for
    consistency with the published numbers); kept here so state_dicts and counts match.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


def _reduction_layers(layers: int) -> Tuple[int, int]:
    """Cells at 1/3 and 2/3 of the depth reduce resolution and double the channels."""
    return layers // 3, 2 * layers // 3


class _Network(nn.Module):
    """Shared cell stack; subclasses provide the stem, the auxiliary head class and stem geometry."""

    def _build_cells(self, genotype: Genotype, C: int, C_stem_prev_prev: int, C_stem_prev: int,
                     reduction_prev: bool, num_classes: int, auxiliary: bool, aux_cls) -> None:
        layers = self._layers
        if layers < 3:
            raise ValueError(f"layers must be at least 3 (two of them reduce), got {layers}")
        reductions = _reduction_layers(layers)
        C_prev_prev, C_prev, C_curr = C_stem_prev_prev, C_stem_prev, C
        self.cells = nn.ModuleList()
        C_to_auxiliary: Optional[int] = None
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self._aux_position:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = aux_cls(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    @property
    def _aux_position(self) -> int:
        # The auxiliary head reads the output of the second reduction cell (2/3 of the depth):
        # deep enough for features worth classifying, early enough that its gradient reaches
        # the lower cells with a short path (the Inception/NASNet auxiliary-tower placement).
        return 2 * self._layers // 3

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_position and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1)), logits_aux


class NetworkCIFAR(_Network):
    """DARTS evaluation network for 32x32 inputs; forward returns (logits, aux_logits or None).

    `drop_path_prob` is an attribute the trainer sets each epoch (DARTS ramps it linearly).
    """

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 stem_multiplier: int = 3):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        self._build_cells(genotype, C, C_stem, C_stem, False, num_classes, auxiliary, AuxiliaryHeadCIFAR)

    def forward(self, x: torch.Tensor):
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_Network):
    """DARTS evaluation network for 224x224 inputs (stems reduce 8x before the first cell)."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # stem1 strides once more than stem0's output, so the first cell's input 0 needs a
        # FactorizedReduce: treat it as following a reduction.
        self._build_cells(genotype, C, C, C, True, num_classes, auxiliary, AuxiliaryHeadImageNet)

    def forward(self, x: torch.Tensor):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run_cells(s0, s1)


def count_parameters(model: nn.Module, include_auxiliary: bool = False) -> int:
    """Number of parameters; by default without the auxiliary head, as DARTS reports model size."""
    return sum(p.numel() for name, p in model.named_parameters()
               if include_auxiliary or "auxiliary" not in name)


def build_network(genotype: Genotype, dataset: str, num_classes: int, init_channels: int,
                  layers: int, auxiliary: bool) -> _Network:
    """NetworkImageNet for 'imagenet', NetworkCIFAR for the 32x32 datasets."""
    if dataset == "imagenet":
        return NetworkImageNet(init_channels, num_classes, layers, auxiliary, genotype)
    return NetworkCIFAR(init_channels, num_classes, layers, auxiliary, genotype)


__all__: List[str] = [
    "drop_path", "Cell", "AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "NetworkCIFAR",
    "NetworkImageNet", "count_parameters", "build_network",
]
