"""The DARTS search network (the "supernet") for 32x32 inputs.

Every edge of a cell is a `MixedOp`: the softmax(alpha)-weighted sum of all candidate operations. Layout and
arithmetic follow the reference DARTS search model exactly, so its checkpoints load with `strict=True`:

* module names and order give state_dict keys such as `stem.0.weight`, `cells.0.preprocess0.op.1.weight`,
  `cells.0._ops.0._ops.4.op.1.weight` and `classifier.weight`;
* the architecture weights `alphas_normal` / `alphas_reduce` are plain leaf tensors, not `nn.Parameter`s, so
  they are in neither `state_dict()` nor `parameters()`; the network optimiser built from `parameters()` never
  touches them. `_apply` is overridden so that `.to()`, `.cuda()` and `.double()` still move them;
* the search cells use BatchNorm without affine parameters (`affine=False`), and pooling candidates are followed
  by such a BatchNorm so their output scale is comparable with the convolutions'.

`backend` selects how a cell is evaluated (`CELL_BACKENDS`): "reference" is the plain PyTorch forward below (the
ground truth); "fused" hands the whole cell to `proxynas_fast.darts.fused.cell_forward`; "auto" picks the one with
a fast path on the network's device (`default_backend`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from proxynas_fast import extension
from proxynas_fast.registry import Registry

from . import fused
from .genotypes import PRIMITIVES, Genotype
from .operations import OPS, FactorizedReduce, ReLUConvBN
from .rng_replay import construction_draws, replay_construction_draws

_NONE_INDEX = PRIMITIVES.index("none")

# How a cell is evaluated, by name (`Network(backend=...)`, `--backend`): each backend evaluates a DARTS cell and
# a PC-DARTS cell and says on which devices it runs its fast path.
CELL_BACKENDS: Registry = Registry("backend")


@CELL_BACKENDS.register("reference")
class ReferenceBackend:
    """The plain PyTorch modules (`Cell.reference_forward`): the ground truth, the same speed on every device."""

    @staticmethod
    def cell_forward(cell, s0, s1, weights):
        return cell.reference_forward(s0, s1, weights)

    @staticmethod
    def pc_cell_forward(cell, s0, s1, weights, edge_weights):
        return cell.reference_forward(s0, s1, weights, edge_weights)

    @staticmethod
    def fast_on(device: torch.device) -> bool:
        return True


@CELL_BACKENDS.register("fused")
class FusedBackend:
    """The fused cell (`proxynas_fast.darts.fused`); fast where the compiled kernels exist for the device (on
    other devices it runs the kernels' pure-PyTorch references: correct, not faster)."""

    @staticmethod
    def cell_forward(cell, s0, s1, weights):
        return fused.cell_forward(cell, s0, s1, weights)

    @staticmethod
    def pc_cell_forward(cell, s0, s1, weights, edge_weights):
        return fused.pc_cell_forward(cell, s0, s1, weights, edge_weights)

    @staticmethod
    def fast_on(device: torch.device) -> bool:
        return extension.has_kernels_for(device)


BACKENDS = tuple(CELL_BACKENDS.names())  # ("reference", "fused")


def default_backend(device: Optional[torch.device] = None) -> str:
    """The backend whose fast path exists on `device`: "fused" when the compiled kernels for that device type are
    there (CPU kernels for cpu, CUDA kernels for cuda), else "reference". `device=None` means the current default
    device (`torch.get_default_device()`, where a network built now is created)."""
    device = torch.device(device) if device is not None else _current_default_device()
    return "fused" if FusedBackend.fast_on(device) else "reference"


def _current_default_device() -> torch.device:
    """`torch.get_default_device()` (torch >= 2.3); on older torch, where a new tensor is created."""
    getter = getattr(torch, "get_default_device", None)
    return getter() if getter is not None else torch.empty(()).device


def check_backend(backend: Optional[str], device: Optional[torch.device] = None) -> str:
    """A backend's registered name; "auto" (or None) means `default_backend(device)`."""
    if backend in (None, "auto"):
        return default_backend(device)
    name = str(backend).lower()
    if name not in CELL_BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {backend!r}")
    return name


def load_fused_backend():
    """The fused cell module `proxynas_fast.darts.fused` (imported with this module; it needs only torch and
    `proxynas_fast.ops`, whose pure-PyTorch references stand in for missing kernels)."""
    return fused


def num_edges(steps: int) -> int:
    """Edges of a cell: intermediate node i (0-based) takes input from the 2 cell inputs and the i earlier nodes."""
    return sum(2 + i for i in range(steps))


class MixedOp(nn.Module):
    """One edge of the supernet: sum over candidates of weight * op(x), in PRIMITIVES order."""

    def __init__(self, C: int, stride: int):
        super().__init__()
        self.stride = stride
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C, stride, False)
            if "pool" in primitive:
                # Pooling has no learnable scale; an affine-free BN puts it on the same footing as the convs.
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    """A search cell: 2 inputs (outputs of the two previous cells), `steps` intermediate nodes, output the
    channel concatenation of the last `multiplier` nodes.

    Edges are stored node by node: node 0's 2 input edges, then node 1's 3 edges, ... (14 edges for 4 steps);
    in a reduction cell only the edges leaving the two cell inputs have stride 2.
    """

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, mixed_op: Callable[[int, int], nn.Module] = MixedOp):
        super().__init__()
        self.reduction = reduction
        self.backend = "reference"
        if reduction_prev:
            # The cell two back has twice the resolution of the previous one: halve it.
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return CELL_BACKENDS.get(self.backend).cell_forward(self, s0, s1, weights)

    def reference_forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            node = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self._multiplier:], dim=1)


def parse_cell(weights: Sequence[Sequence[float]], steps: int) -> List[tuple]:
    """Discretise one cell's edge weights (rows: edges in cell order, columns: PRIMITIVES) into a genotype list.

    For each node keep the 2 incoming edges whose strongest non-'none' op weighs most, and on each the strongest
    non-'none' op. Ties are broken like the reference: a stable sort keeps the lower input index first, and the
    first op (in PRIMITIVES order) reaching the maximum wins.
    """
    def best_op(row):
        best = None
        for k, w in enumerate(row):
            if k != _NONE_INDEX and (best is None or w > row[best]):
                best = k
        return best

    gene = []
    start = 0
    for i in range(steps):
        rows = [list(map(float, weights[start + j])) for j in range(2 + i)]
        strongest = sorted(range(2 + i), key=lambda j: -rows[j][best_op(rows[j])])[:2]
        for j in strongest:
            gene.append((PRIMITIVES[best_op(rows[j])], j))
        start += 2 + i
    return gene


class Network(nn.Module):
    """DARTS search network for 32x32 images.

    Args:
        C: channels of the first cells (16 in the paper); the stem outputs `stem_multiplier * C`.
        num_classes: classifier outputs.
        layers: number of cells; cells `layers // 3` and `2 * layers // 3` are reduction cells (channels doubled).
        criterion: loss used by `_loss` (default `nn.CrossEntropyLoss()`).
        steps: intermediate nodes per cell; multiplier: how many of the last nodes form the cell output.
        backend: "reference", "fused" or "auto" (fused when the compiled kernels for the device of the weights
            exist, chosen again when the network moves; see `default_backend`); settable later via `model.backend`.
    """

    # First cell's preprocess0 halves its input when the stem already downsampled twice (ImageNet variant).
    _first_reduction_prev = False

    def __init__(self, C: int, num_classes: int, layers: int, criterion: Optional[nn.Module] = None,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3, backend: str = "auto"):
        super().__init__()
        for name, value in (("C", C), ("num_classes", num_classes), ("layers", layers), ("steps", steps),
                            ("multiplier", multiplier), ("stem_multiplier", stem_multiplier)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if multiplier > steps:
            raise ValueError(f"multiplier ({multiplier}) cannot exceed steps ({steps}): the cell output "
                             "concatenates the last `multiplier` intermediate nodes")
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        self._criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self._steps = steps
        self._multiplier = multiplier
        self._stem_multiplier = stem_multiplier

        C_stem = stem_multiplier * C
        self._build_stem(C_stem)
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        self.cells = nn.ModuleList()
        reduction_prev = self._first_reduction_prev
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(self._make_cell(steps, multiplier, C_prev_prev, C_prev, C_curr,
                                              reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self._arch_names: List[str] = []
        # The architecture tensors in registration order; `arch_parameters()` returns this very list, and the
        # attribute name is the reference's (code written against the reference reads it directly).
        self._arch_parameters: List[torch.Tensor] = []
        self._initialize_alphas()
        self.backend = backend

    # ----- construction hooks (overridden by the PC-DARTS and ImageNet variants) -----
    def _build_stem(self, C_stem: int) -> None:
        self.stem = nn.Sequential(
            nn.Conv2d(3, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )

    def _stem_forward(self, x: torch.Tensor):
        s = self._run_stem(self.stem, x)
        return s, s

    def _run_stem(self, stem: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """`stem(x)`; the fused backend runs its BatchNorms on the mixed-node kernels (`fused.run_sequential`)."""
        return fused.run_sequential(stem, x) if self.backend == "fused" else stem(x)

    def _make_cell(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev) -> Cell:
        return Cell(steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev)

    def _config(self) -> Dict:
        """Constructor arguments, so that `new()` rebuilds the same architecture."""
        return dict(C=self._C, num_classes=self._num_classes, layers=self._layers, criterion=self._criterion,
                    steps=self._steps, multiplier=self._multiplier, stem_multiplier=self._stem_multiplier,
                    backend="auto" if self.__dict__.get("_backend_auto", False) else self.backend)

    # ----- architecture weights -----
    def _register_arch(self, name: str, shape) -> None:
        """A leaf tensor attribute (reference behaviour: not a Parameter, not in the state_dict)."""
        tensor = (1e-3 * torch.randn(*shape)).requires_grad_(True)
        object.__setattr__(self, name, tensor)
        self._arch_names.append(name)
        self._arch_parameters.append(tensor)

    def _initialize_alphas(self) -> None:
        k = num_edges(self._steps)
        self._register_arch("alphas_normal", (k, len(PRIMITIVES)))
        self._register_arch("alphas_reduce", (k, len(PRIMITIVES)))

    def arch_parameters(self) -> List[torch.Tensor]:
        """The architecture tensors (alphas, then PC-DARTS's betas): the same list object on every call, also
        reachable as `_arch_parameters`, as in the reference."""
        return self._arch_parameters

    def weights_parameters(self) -> List[nn.Parameter]:
        """The network weights (everything the SGD optimiser trains); never the architecture weights."""
        arch = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_state(self) -> Dict[str, torch.Tensor]:
        """Copies of the architecture weights by name (they are not in `state_dict()`); for checkpoints."""
        return {name: getattr(self, name).detach().clone() for name in self._arch_names}

    def load_arch_state(self, state: Dict[str, torch.Tensor]) -> None:
        missing = [n for n in self._arch_names if n not in state]
        if missing:
            raise KeyError(f"architecture state lacks {missing}; has {sorted(state)}")
        for name in self._arch_names:
            dst, src = getattr(self, name), state[name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"architecture weight {name}: expected shape {tuple(dst.shape)}, "
                                 f"got {tuple(src.shape)}")
            with torch.no_grad():
                dst.copy_(src)

    def _apply(self, fn, recurse=True):
        # Parameters and buffers are handled by nn.Module; the alphas are plain attributes, so convert them
        # here the same way (swap `.data`), keeping the very same leaf tensors that optimisers hold.
        super()._apply(fn, recurse)
        for tensor in self.arch_parameters():
            with torch.no_grad():
                converted = fn(tensor)
            if converted is not tensor:
                tensor.data = converted
            if tensor.grad is not None:
                with torch.no_grad():
                    grad = fn(tensor.grad)
                if grad is not tensor.grad:
                    tensor.grad.data = grad
        if self.__dict__.get("_backend_auto"):
            self.backend = "auto"  # the fast path of the device the network is now on
        return self

    # ----- backend -----
    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        """A backend name, or "auto": the backend with a fast path on the device of the network's weights, chosen
        again whenever the network moves (`.to()`, `.cuda()`)."""
        name = check_backend(value, self._device())  # validated first: a refused name changes nothing
        object.__setattr__(self, "_backend_auto", value in (None, "auto"))
        object.__setattr__(self, "_backend", name)
        value = name
        for cell in self.cells:
            cell.backend = value

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- forward -----
    def _cell_weights(self):
        """Per-forward edge weights handed to the cells: {reduction flag: positional extras for Cell.forward}."""
        return {False: (F.softmax(self.alphas_normal, dim=-1),),
                True: (F.softmax(self.alphas_reduce, dim=-1),)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self._cell_weights()
        # fused: each cell output's ReLU computed once for the two cells that read it (`fused.shared_relus`)
        with fused.shared_relus() if self.backend == "fused" else contextlib.nullcontext():
            s0, s1 = self._stem_forward(x)
            for cell in self.cells:
                s0, s1 = s1, cell(s0, s1, *weights[cell.reduction])
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def _loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._criterion(self(x), target)

    def new(self) -> "Network":
        """A fresh network of the same architecture (new random weights), on the same device and dtype, with a
        copy of the architecture weights; it shares no tensor with this one."""
        model_new = type(self)(**self._config())
        reference = next(self.parameters())
        model_new.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            for dst, src in zip(model_new.arch_parameters(), self.arch_parameters()):
                dst.copy_(src)
        return model_new

    def advance_rng_as_new(self) -> None:
        """Advance the global RNG exactly as `new()` does (its construction draws every convolution and linear
        weight, then the alphas), without building a network; see `proxynas_fast.darts.rng_replay`. The list of
        draws is worked out on the first call (a walk over ~1,400 modules at full size) and kept."""
        draws = self.__dict__.get("_new_draws")
        if draws is None:
            draws = (construction_draws(self.modules()), [tuple(a.shape) for a in self.arch_parameters()])
            object.__setattr__(self, "_new_draws", draws)
        replay_construction_draws(*draws)

    # ----- discretisation -----
    def _genotype_weights(self):
        """Per cell type, the [edges, ops] strengths used to pick edges and ops."""
        return (F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1))

    def genotype(self) -> Genotype:
        """The discrete cell (see `parse_cell`). The concat is a `range`, as in the reference, so the printed
        genotype is the reference's character for character."""
        normal, reduce = (w.detach().cpu().tolist() for w in self._genotype_weights())
        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=parse_cell(normal, self._steps), normal_concat=concat,
                        reduce=parse_cell(reduce, self._steps), reduce_concat=concat)
