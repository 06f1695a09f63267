"""The cell plan: everything about a search cell that does not change from step to step.

Built once per cell from its modules (`cell_plan`) and kept on the cell, so that a step does only tensor work:
the structure is checked (`FusedCellError` otherwise), each node's terms are laid out, the poolings that nodes
share are numbered, and the index tensors are made once per (device, BatchNorm modes).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..genotypes import PRIMITIVES
from ..operations import DilConv, FactorizedReduce, Identity, SepConv, Zero
from .kernel_batch_norm import _uses_batch_stats

Tensor = torch.Tensor


PRIMITIVE_COLUMN = {p: i for i, p in enumerate(PRIMITIVES)}


_CONV_PRIMITIVES = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


_POOL_PRIMITIVES = ("max_pool_3x3", "avg_pool_3x3")


_EXPECTED = {
    "none": (Zero,), "max_pool_3x3": (nn.Sequential,), "avg_pool_3x3": (nn.Sequential,),
    "skip_connect": (Identity, FactorizedReduce), "sep_conv_3x3": (SepConv,), "sep_conv_5x5": (SepConv,),
    "dil_conv_3x3": (DilConv,), "dil_conv_5x5": (DilConv,),
}


class FusedCellError(ValueError):
    """The cell's structure is not one the fused path knows how to evaluate."""


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
        """The terms of edge e (reading state j), in the order the node sums them (fixed, so that sums
        round the same on every step): the two poolings, the convolutional candidates (and the strided skip), the identity skip."""
        mixed = cell._ops[e]
        state_slot = len(node.sources)
        node.sources.append((j, -1))
        for prim in _POOL_PRIMITIVES:
            pool, bn = mixed._ops[PRIMITIVE_COLUMN[prim]]
            key = (j, prim, pool.stride)
            owner = key not in owners
            if owner:
                owners[key] = len(self.pools)
                self.pools.append((isinstance(pool, nn.MaxPool2d), (pool.kernel_size, pool.stride, pool.padding)))
            node.terms.append(_Term("pool", state_slot, e, PRIMITIVE_COLUMN[prim], bn=bn, pool=owners[key], owner=owner))
        branch_prims = list(_CONV_PRIMITIVES) + (["skip_connect"] if self.readers[j].skips else [])
        for k, prim in enumerate(branch_prims):
            node.sources.append((e, k))
            node.terms.append(_Term("z", len(node.sources) - 1, e, PRIMITIVE_COLUMN[prim], bn=_final_bn(mixed, prim)))
        if isinstance(mixed._ops[PRIMITIVE_COLUMN["skip_connect"]], Identity):
            node.terms.append(_Term("id", state_slot, e, PRIMITIVE_COLUMN["skip_connect"]))

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
    convs = {prim: [list(stage) for stage in zip(*(m._ops[PRIMITIVE_COLUMN[prim]].op for m in mixed))]
             for prim in _CONV_PRIMITIVES}
    skips = [m._ops[PRIMITIVE_COLUMN["skip_connect"]] for m in mixed]
    skips = skips if skips and isinstance(skips[0], FactorizedReduce) else []
    return _StateReaders(edges, mixed[0].stride if mixed else 1, convs, skips)


def _final_bn(mixed: nn.Module, prim: str) -> nn.BatchNorm2d:
    op = mixed._ops[PRIMITIVE_COLUMN[prim]]
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
