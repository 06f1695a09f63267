"""Multi-process search helpers (torchrun / DDP): the collectives of the search loop and the DDP wrapper.

Every rank runs the same search on its shard of both proxy halves; only rank 0 writes files. The process group
itself (`DistContext`, `process_group`, ...) is `proxynas_fast.distributed`, shared with scoring; its names are
importable from here too.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence

import torch
import torch.distributed as dist

from proxynas_fast.distributed import (DistContext, barrier, init_distributed, launched_by_torchrun, process_group,
                                       resolve_device, shutdown)

__all__ = ["DistContext", "all_reduce_mean_", "all_reduce_sum", "barrier", "broadcast_", "broadcast_object",
           "init_distributed", "launched_by_torchrun", "max_difference_from_rank0", "process_group",
           "resolve_device", "shutdown", "wrap_model"]


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
