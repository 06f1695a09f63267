"""Multi-process search helpers (torchrun / DDP): the collectives of the search loop and the DDP wrapper.

Every rank runs the same search on its shard of both proxy halves; only rank 0 writes files. The process group
itself (`DistContext`, `process_group`, the timeout and `RanksLost`) is `proxynas_fast.distributed`, shared with
scoring; its names are importable from here too.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

from proxynas_fast.distributed import (DEFAULT_TIMEOUT_S, DistContext, RanksLost, barrier, init_distributed,
                                       launched_by_torchrun, lost_rank_error, process_group, resolve_device,
                                       restarted_by_torchrun, shutdown)

__all__ = ["DEFAULT_TIMEOUT_S", "DistContext", "RanksLost", "SyncBatchNorm2d", "all_reduce_mean_", "all_reduce_sum",
           "barrier", "broadcast_", "broadcast_object", "convert_sync_batchnorm", "init_distributed",
           "launched_by_torchrun", "lost_rank_error", "max_difference_from_rank0", "process_group",
           "resolve_device", "restarted_by_torchrun", "shutdown", "wrap_model"]


def all_reduce_mean_(tensors: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Average tensors over ranks in place (one flat all-reduce)."""
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(ctx.world_size)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def all_reduce_sum(values: Sequence[float], ctx: DistContext, device: torch.device) -> List[float]:
    """Sum Python numbers over ranks (epoch metrics)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_(tensors: Iterable[torch.Tensor], ctx: DistContext, src: int = 0) -> None:
    """Copy rank `src`'s values into every rank's tensors (e.g. the alphas, which DDP does not see)."""
    if not ctx.enabled:
        return
    for t in tensors:
        with torch.no_grad():
            dist.broadcast(t.data, src)


def broadcast_object(obj, ctx: DistContext, src: int = 0):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP around the supernet for the weight step. Its weights are averaged by DDP; the architecture weights
    are plain tensors outside `parameters()`, so DDP never sees them (the search loop averages their
    gradients itself)."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, broadcast_buffers=True)


def max_difference_from_rank0(tensors: Sequence[torch.Tensor], ctx: DistContext) -> float:
    """Largest |x - x_rank0| over the tensors and all ranks (0.0 when the ranks agree bitwise)."""
    if not ctx.enabled or not tensors:
        return 0.0
    local = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    reference = local.clone()
    dist.broadcast(reference, 0)
    diff = (local - reference).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


class SyncBatchNorm2d(torch.nn.BatchNorm2d):
    """nn.BatchNorm2d whose training-mode statistics are those of the global batch (all ranks' examples), as one
    process over the concatenated batch computes them; `--sync-bn`. Eval mode, and a single process, are
    nn.BatchNorm2d's. torch's nn.SyncBatchNorm runs on GPUs only; this one runs on any process group (gloo on
    CPU too): two differentiable all-reduces (`torch.distributed.nn.functional.all_reduce`: the backward sums
    the gradients of every rank's share), one of the per-channel sums and counts for the mean, one of the
    squared deviations from it for the variance (two passes: no cancellation in E[x^2] - E[x]^2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(x)
        channels = x.shape[1]
        count = x.new_full((1,), x.numel() // channels)
        totals = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        centred = x - mean.view(1, -1, 1, 1)
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n))
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(var * (n / max(n - 1.0, 1.0)), alpha=momentum)  # unbiased


def convert_sync_batchnorm(module: torch.nn.Module) -> int:
    """Replace every nn.BatchNorm2d inside `module` by a SyncBatchNorm2d with the same settings and state; the
    number replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=_device_of(child))
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
            replaced += 1
        else:
            replaced += convert_sync_batchnorm(child)
    return replaced


def _device_of(bn: torch.nn.BatchNorm2d) -> Optional[torch.device]:
    for t in list(bn.parameters()) + list(bn.buffers()):
        return t.device
    return None
