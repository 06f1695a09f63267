"""The first-order search step (`search_step.SearchStep`) captured whole in a CUDA graph and replayed
(`CudaGraphSearchStep`).

The CUDA-graph version follows the torch.cuda.graphs recipe for whole-network capture: static input buffers,
a few eager warm-up steps on a side stream (they allocate gradients, optimiser state and the fused cell's
cached index tensors), then capture of forward + backward + optimiser steps, and replay after copying each new
batch into the static buffers. The warm-up steps do not count as training: `TrainingSnapshot` puts weights,
buffers and optimiser state back in place afterwards (same tensors, so the graph's addresses stay valid), and
optimiser state that the warm-up created is zeroed, which is what a first SGD (momentum, no dampening) or Adam
step starts from. Replayed steps therefore follow the eager steps exactly. Requirements (checked where possible):

* every batch has the capture's shapes and dtypes;
* Adam/AdamW must be built with `capturable=True` (their step counter then lives on the GPU);
* learning rates are baked into the graph (torch's SGD reads a tensor learning rate with `.item()`, so that is
  no way out): after changing one (an LR scheduler), `stale` is True and `recapture()` is needed
  (`proxynas_fast.search.steps.SearchSteps` does that);
* nothing in the step may synchronise with the host (no `.item()`, no host-to-device copy); the fused cell
  satisfies this (tests/test_no_host_sync.py runs a whole step on fake CUDA tensors and fails on any).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .search_step import SearchStep, StepOutput

__all__ = ["CudaGraphSearchStep", "SearchStep", "StepOutput", "TrainingSnapshot", "make_capturable"]

Tensor = torch.Tensor


class TrainingSnapshot:
    """In-place save / restore of a model's parameters and buffers, the tensors its optimisers update, and the
    optimisers' state.

    `restore()` copies the saved values back into the same tensors (never rebinding them), and zeroes optimiser
    state tensors created after the snapshot; state entries that are not tensors are put back as saved."""

    def __init__(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]):
        for opt in optimizers:
            if isinstance(opt, torch.optim.SGD) and any(g.get("dampening", 0) != 0 for g in opt.param_groups):
                raise ValueError("TrainingSnapshot: SGD with dampening != 0 does not start from a zero momentum "
                                 "buffer, so a restored (zeroed) buffer would change the first step")
        tensors = {}
        for t in list(model.parameters()) + list(model.buffers()) + [
                p for opt in optimizers for group in opt.param_groups for p in group["params"]]:
            tensors.setdefault(id(t), t)  # optimisers may hold tensors the model does not register (DARTS alphas)
        self._model_tensors = [(t, t.detach().clone()) for t in tensors.values()]
        self._optimizers = list(optimizers)
        self._states = [{id(p): {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                         for p, st in opt.state.items()} for opt in self._optimizers]

    @torch.no_grad()
    def restore(self) -> None:
        for t, saved in self._model_tensors:
            t.copy_(saved)
        for opt, saved_states in zip(self._optimizers, self._states):
            for p, st in opt.state.items():
                saved = saved_states.get(id(p), {})
                for k, v in list(st.items()):
                    if k in saved:
                        if torch.is_tensor(v):
                            v.copy_(saved[k])
                        else:
                            st[k] = saved[k]
                    elif torch.is_tensor(v):
                        v.zero_()
                    else:
                        raise ValueError(f"TrainingSnapshot: optimiser state {k!r} appeared after the snapshot "
                                         f"and is not a tensor; cannot restore it in place")


class CudaGraphSearchStep:
    """`SearchStep` captured in one CUDA graph and replayed.

    Usage:
        step = CudaGraphSearchStep(model, w_opt, a_opt, example_batch=(xt, yt, xv, yv))
        for xt, yt, xv, yv in loader:
            out = step(xt, yt, xv, yv)   # StepOutput of tensors owned by the graph: use or clone before the next call

    The example batch fixes the shapes and feeds the `warmup_steps` eager warm-up steps, whose effect on the model
    and optimisers is undone (see `TrainingSnapshot`).
    """

    def __init__(self, model: nn.Module, weight_optimizer: torch.optim.Optimizer,
                 arch_optimizer: torch.optim.Optimizer, example_batch: Sequence[Tensor], grad_clip: float = 5.0,
                 warmup_steps: int = 3, update_arch: bool = True):
        if not torch.cuda.is_available():
            raise RuntimeError("CudaGraphSearchStep needs a CUDA device; use SearchStep on CPU")
        if len(example_batch) != 4:
            raise ValueError("example_batch must be (x_train, y_train, x_val, y_val)")
        if any(not t.is_cuda for t in example_batch):
            raise ValueError("CudaGraphSearchStep: the example batch must be on the GPU (model's device)")
        param = next(model.parameters())
        if not param.is_cuda:
            raise ValueError("CudaGraphSearchStep: move the model to the GPU first")
        for opt in (weight_optimizer, arch_optimizer):
            if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and not all(
                    g.get("capturable", False) for g in opt.param_groups):
                raise ValueError(f"CudaGraphSearchStep: build {type(opt).__name__} with capturable=True so its "
                                 "step counter stays on the GPU")
        self._eager = SearchStep(model, weight_optimizer, arch_optimizer, grad_clip, update_arch,
                                 keep_grad_tensors=True)  # the graph reads the gradients at fixed addresses
        self._static_inputs = [t.detach().clone() for t in example_batch]
        self._warmup_steps = int(warmup_steps)
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._static_outputs: Optional[StepOutput] = None
        self._captured_lrs: List[float] = []
        self.recapture()

    def _learning_rates(self) -> List[float]:
        return [float(g["lr"]) for opt in (self._eager.weight_optimizer, self._eager.arch_optimizer)
                for g in opt.param_groups]

    @property
    def input_shapes(self) -> List[tuple]:
        return [tuple(t.shape) for t in self._static_inputs]

    @property
    def stale(self) -> bool:
        """True when a learning rate changed since the capture (it is baked into the graph): `recapture()`."""
        return self._learning_rates() != self._captured_lrs

    def recapture(self) -> None:
        """(Re)run the warm-up steps and capture the step; needed after a learning-rate change."""
        eager = self._eager
        self._graph = self._static_outputs = None  # free the old capture's memory first
        snapshot = TrainingSnapshot(eager.model, [eager.weight_optimizer, eager.arch_optimizer])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(max(self._warmup_steps, 1)):
                eager(*self._static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_outputs = eager(*self._static_inputs)
        self._graph = graph
        self._captured_lrs = self._learning_rates()
        snapshot.restore()  # the warm-up steps were not training steps

    def __call__(self, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor) -> StepOutput:
        for static, new, name in zip(self._static_inputs, (x_train, y_train, x_val, y_val),
                                     ("x_train", "y_train", "x_val", "y_val")):
            if new.shape != static.shape or new.dtype != static.dtype:
                raise ValueError(f"CudaGraphSearchStep: {name} is {tuple(new.shape)} {new.dtype}, the captured "
                                 f"step takes {tuple(static.shape)} {static.dtype}")
            static.copy_(new, non_blocking=True)
        self._graph.replay()
        return self._static_outputs


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch an Adam/AdamW optimiser (e.g. after `load_state_dict` of a non-capturable run) to
    `capturable=True`, with its step counters on the parameters' device, as CUDA-graph capture requires."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
