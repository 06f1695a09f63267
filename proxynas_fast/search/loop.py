"""One search epoch: alternate architecture and weight steps over the two proxy halves; and validation.

Per step (as in DARTS): one architecture step on a batch of the architecture half (skipped during the warm-up
epochs), then one SGD step of the network weights on a batch of the weight half. Under DDP the weight
gradients are averaged by DDP and the architecture gradients by `arch_step`, so every rank applies the same
updates and the alphas stay identical on all ranks. (Second order under DDP: each rank unrolls the weights with
its own training batch, so the averaged hypergradient is the mean of the per-rank ones; for first order the
average is exactly the gradient of the mean loss.)
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from proxynas_fast.darts.architect import apply_arch_gradients
from proxynas_fast.darts.search_step import SearchStep, weight_step
from proxynas_fast.progress import open_progress

from .distributed import DistContext, all_reduce_mean_, all_reduce_sum, broadcast_


@dataclass
class EpochMetrics:
    loss: float
    accuracy: float  # top-1, percent
    examples: int  # over all ranks
    seconds: float
    # Of `seconds`, the host time spent drawing batches from the loaders (waiting for decoding workers, reading an
    # image store, augmenting on the host; device work a loader queues runs in the steps' time).
    data_seconds: float = 0.0


class _Running:
    """Loss and top-1 sums kept on the device (no host sync per step)."""

    def __init__(self, device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        self.loss += loss.detach().double() * n
        self.correct += (logits.detach().argmax(dim=1) == target).sum()
        self.count += n

    def local(self):
        return float(self.loss), int(self.correct), self.count

    def reduce(self, ctx: DistContext, seconds: float) -> EpochMetrics:
        loss, correct, count = all_reduce_sum(self.local(), ctx, self.loss.device)
        count = int(round(count))
        return EpochMetrics(loss / max(count, 1), 100.0 * correct / max(count, 1), count, seconds)


def arch_step(architect, x_train, y_train, x_arch, y_arch, eta: float, network_optimizer, unrolled: bool,
              ctx: DistContext) -> torch.Tensor:
    """`Architect.step` with the architecture gradients averaged over ranks before the Adam update."""
    grads, loss = architect.arch_gradients(x_train, y_train, x_arch, y_arch, eta, network_optimizer, unrolled)
    all_reduce_mean_(grads, ctx)
    apply_arch_gradients(architect.optimizer, architect.model.arch_parameters(), grads)
    return loss


def eager_steps(*, model: nn.Module, forward_model: nn.Module, architect, optimizer, criterion, lr: float,
                grad_clip: float, unrolled: bool, ctx: DistContext):
    """The loop's own steps, `(x, y, x_arch, y_arch, update_arch) -> (logits, loss)`: first order is
    `SearchStep` (the step CUDA graphs capture and the benchmark times), with the architecture gradients
    averaged over ranks; second order takes `Architect`'s unrolled gradients, then the same weight step."""
    first_order = {update: SearchStep(model, optimizer, architect.optimizer, grad_clip, update,
                                      forward_model=forward_model, criterion=criterion,
                                      average_arch_gradients=lambda grads: all_reduce_mean_(grads, ctx))
                   for update in (True, False)}

    def step(x, y, x_arch, y_arch, update_arch: bool):
        if unrolled and update_arch:
            arch_step(architect, x, y, x_arch, y_arch, lr, optimizer, True, ctx)
            return weight_step(model, forward_model, optimizer, criterion, x, y, grad_clip)
        out = first_order[update_arch](x, y, x_arch, y_arch)
        return out.logits, out.weight_loss

    return step


def steps_per_epoch(weight_loader, arch_loader, ctx: DistContext, device) -> int:
    """Both halves are consumed in lock step; every rank must run the same number of steps (DDP)."""
    steps = min(len(weight_loader), len(arch_loader))
    if ctx.enabled:
        t = torch.tensor([steps], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        steps = int(t.item())
    return steps


def _report_step(done: int, steps: int, running: _Running, bar, on_step, log_every: int) -> None:
    """Advance the bar (its loss/accuracy every 10 steps) and call `on_step` every `log_every` steps and after
    the last; the running values are read from the device only then."""
    report = done % log_every == 0 or done == steps
    if bar is not None:
        bar.update(1)
        if report or done % 10 == 0:
            loss_sum, correct, count = running.local()
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{100.0 * correct / count:.1f}")
    if report and on_step is not None:
        loss_sum, correct, count = running.local()
        on_step(done, steps, loss_sum / count, 100.0 * correct / count)


def train_epoch(*, model, forward_model, architect, optimizer, criterion, weight_loader, arch_loader,
                lr: float, grad_clip: float, update_arch: bool, unrolled: bool, ctx: DistContext, device,
                progress: bool = False, description: str = "",
                on_step: Optional[Callable[[int, int, float, float], None]] = None,
                log_every: int = 50, steps_impl=None) -> EpochMetrics:
    """Train one epoch; returns loss and top-1 of the weight steps over all ranks.

    on_step(step, steps, mean_loss, accuracy) is called every `log_every` steps (local running values).
    steps_impl: a `proxynas_fast.search.steps.SearchSteps` (first order, one process) that takes both steps at
    once, replayed from CUDA graphs; None: `eager_steps`.
    """
    model.train()
    start = time.perf_counter()
    steps = steps_per_epoch(weight_loader, arch_loader, ctx, device)
    running = _Running(device)
    if steps_impl is None:
        steps_impl = eager_steps(model=model, forward_model=forward_model, architect=architect, optimizer=optimizer,
                                 criterion=criterion, lr=lr, grad_clip=grad_clip, unrolled=unrolled, ctx=ctx)
    bar = open_progress(progress, steps, description, stream=sys.stderr)  # a bar, or lines when redirected
    arch_batches = iter(arch_loader)
    weight_batches = iter(weight_loader)
    data_seconds = 0.0
    for step in range(steps):
        drawn = time.perf_counter()
        x, y = next(weight_batches)
        x_arch = y_arch = None
        if update_arch:
            x_arch, y_arch = next(arch_batches)
        data_seconds += time.perf_counter() - drawn
        logits, loss = steps_impl(x, y, x_arch, y_arch, update_arch)
        running.add(loss, logits, y)
        _report_step(step + 1, steps, running, bar, on_step, log_every)
    if bar is not None:
        bar.close()
    metrics = running.reduce(ctx, time.perf_counter() - start)
    metrics.data_seconds = data_seconds
    return metrics


@torch.no_grad()
def validate(model, criterion, loader, ctx: DistContext, device, progress: bool = False,
             description: str = "validation") -> EpochMetrics:
    """Loss and top-1 on the architecture half in eval mode (BatchNorm running statistics), over all ranks.

    Ranks first take rank 0's BatchNorm statistics, so every rank evaluates the same network."""
    start = time.perf_counter()
    broadcast_(list(model.buffers()), ctx)
    model.eval()
    running = _Running(device)
    bar = open_progress(progress, len(loader), description, stream=sys.stderr)
    for x, y in loader:
        logits = model(x)
        running.add(criterion(logits, y), logits, y)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train()
    return running.reduce(ctx, time.perf_counter() - start)
