"""`--cuda-graphs`: the search loop's first-order steps (architecture step + weight step) as one
`SearchStep`, replayed from CUDA graphs.

One graph per kind of step (with and without the architecture update: weight-only warm-up epochs), captured on
the first batch of that kind and captured again when a learning rate has changed (the cosine schedule changes it
once per epoch; a capture costs a few eager warm-up steps whose effect is undone). Replayed steps compute exactly
the eager steps (`proxynas_fast.darts.graphed_step`). With `cuda_graphs=False` the same steps run eagerly,
which is how the CPU tests check this path against the loop's ordinary steps.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn

from proxynas_fast.darts.graphed_step import CudaGraphSearchStep, SearchStep, make_capturable

from .errors import SearchError


class SearchSteps:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, arch_optimizer: torch.optim.Optimizer,
                 grad_clip: float, cuda_graphs: bool, warmup_steps: int = 3):
        if cuda_graphs:
            device = next(model.parameters()).device
            if device.type != "cuda":
                raise SearchError(f"--cuda-graphs: the search runs on {device}; CUDA graphs need a CUDA device")
            make_capturable(arch_optimizer)
        self.model, self.optimizer, self.arch_optimizer = model, optimizer, arch_optimizer
        self.grad_clip, self.cuda_graphs, self.warmup_steps = grad_clip, bool(cuda_graphs), int(warmup_steps)
        self._steps: Dict[bool, object] = {}
        self.captures = 0

    def __call__(self, x, y, x_arch, y_arch, update_arch: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the weight step's (logits, loss), valid until the next call."""
        if not update_arch:  # the graph's inputs are fixed: feed the weight batch twice, the second unused
            x_arch, y_arch = x, y
        step = self._steps.get(update_arch)
        if not self.cuda_graphs:
            if step is None:
                step = self._steps[update_arch] = SearchStep(self.model, self.optimizer, self.arch_optimizer,
                                                             self.grad_clip, update_arch)
        elif step is None or step.stale or step.input_shapes != [tuple(t.shape) for t in (x, y, x_arch, y_arch)]:
            self._steps.pop(update_arch, None)
            step = self._steps[update_arch] = CudaGraphSearchStep(
                self.model, self.optimizer, self.arch_optimizer, example_batch=(x, y, x_arch, y_arch),
                grad_clip=self.grad_clip, warmup_steps=self.warmup_steps, update_arch=update_arch)
            self.captures += 1
        out = step(x, y, x_arch, y_arch)
        return out.logits, out.weight_loss
