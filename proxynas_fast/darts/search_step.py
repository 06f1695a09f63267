"""The first-order DARTS search step (architecture step, then weight step): the one implementation that the
search loop runs, that `graphed_step.CudaGraphSearchStep` captures and that benchmarks/bench_search_step.py
times.

Architecture step: the loss on the architecture batch, its gradient with respect to the architecture tensors only
(`architect.first_order_arch_gradients`; averaged over ranks when a hook is given), one step of the
architecture optimiser (Adam in DARTS). Weight step: the loss on the weight batch, backward, gradient-norm clip,
one step of the weight optimiser (SGD).
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from .architect import apply_arch_gradients, first_order_arch_gradients

Tensor = torch.Tensor


class StepOutput(NamedTuple):
    arch_loss: Optional[Tensor]   # None when the step has no architecture update
    weight_loss: Tensor
    logits: Tensor                # of the weight step's batch (for running accuracy)


def weight_step(model: nn.Module, forward_model: nn.Module, optimizer: torch.optim.Optimizer, criterion, x: Tensor,
                y: Tensor, grad_clip: float, keep_grad_tensors: bool = False) -> Tuple[Tensor, Tensor]:
    """One step of the network weights; `forward_model` is the DDP wrapper (or the model itself). Returns
    (logits, loss). The gradients are freed before the forward (less memory at its peak) unless
    `keep_grad_tensors`: a CUDA graph needs them to stay the same tensors."""
    optimizer.zero_grad(set_to_none=not keep_grad_tensors)
    logits = forward_model(x)
    loss = criterion(logits, y)
    loss.backward()
    nn.utils.clip_grad_norm_(model.weights_parameters(), grad_clip)
    optimizer.step()
    return logits, loss


class SearchStep:
    """First-order search step on `model` (a DARTS/PC-DARTS search network with `_criterion`, `_loss`,
    `arch_parameters()` and `weights_parameters()`): the architecture step (unless `update_arch` is False:
    weight-only warm-up epochs), then the weight step.

    forward_model: what the weight step calls (a DDP wrapper), default the model; criterion: default
    `model._criterion`; average_arch_gradients: called on the list of architecture gradients before the update
    (the mean over ranks under DDP); keep_grad_tensors: gradients stay the same tensors from step to step (CUDA
    graphs)."""

    def __init__(self, model: nn.Module, weight_optimizer: torch.optim.Optimizer,
                 arch_optimizer: torch.optim.Optimizer, grad_clip: float = 5.0, update_arch: bool = True, *,
                 forward_model: Optional[nn.Module] = None, criterion=None,
                 average_arch_gradients: Optional[Callable[[List[Tensor]], None]] = None,
                 keep_grad_tensors: bool = False):
        self.model = model
        self.weight_optimizer = weight_optimizer
        self.arch_optimizer = arch_optimizer
        self.grad_clip = grad_clip
        self.update_arch = bool(update_arch)
        self.forward_model = model if forward_model is None else forward_model
        self.criterion = model._criterion if criterion is None else criterion
        self.average_arch_gradients = average_arch_gradients
        self.keep_grad_tensors = bool(keep_grad_tensors)

    def __call__(self, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor) -> StepOutput:
        arch_loss = None
        if self.update_arch:
            grads, arch_loss = first_order_arch_gradients(self.model, x_val, y_val)
            if self.average_arch_gradients is not None:
                self.average_arch_gradients(grads)
            apply_arch_gradients(self.arch_optimizer, self.model.arch_parameters(), grads)
        logits, weight_loss = weight_step(self.model, self.forward_model, self.weight_optimizer, self.criterion,
                                          x_train, y_train, self.grad_clip, self.keep_grad_tensors)
        return StepOutput(arch_loss, weight_loss.detach(), logits.detach())
