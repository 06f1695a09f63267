"""Multi-process search helpers (torchrun / DDP).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them (or
takes an explicit init_method such as file:///tmp/x for tests) and picks the backend: NCCL on CUDA, gloo on
CPU. Every rank runs the same search on its shard of both proxy halves; only rank 0 writes files.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str] = None  # None: a single process, no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(requested)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", *, init_method: Optional[str] = None, rank: Optional[int] = None,
                     world_size: Optional[int] = None) -> DistContext:
    """A DistContext for this process; joins the process group when there is more than one process."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, 0, dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, dev, backend)


def shutdown(ctx: DistContext, *, synchronize: bool = False) -> None:
    """Leave the process group. `synchronize`: wait for every rank first (only on the success path: after a
    failure the other ranks may never arrive)."""
    if not (ctx.enabled and dist.is_initialized()):
        return
    # DDP sits in reference cycles (its hooks refer back to it), so reference counting never frees it: its
    # reducer would keep the process group alive until a later garbage collection or interpreter
    # finalisation, where gloo's worker threads are torn down under a dying interpreter and the process
    # aborts ("terminate called without an active exception"). Collect it while everything is alive.
    gc.collect()
    if synchronize:
        barrier(ctx)
    dist.destroy_process_group()


@contextmanager
def process_group(device: str = "auto", *, init_method: Optional[str] = None, rank: Optional[int] = None,
                  world_size: Optional[int] = None) -> Iterator[DistContext]:
    """`init_distributed` for the body, then `shutdown`: after every rank has arrived when the body ended
    normally, at once when it raised."""
    ctx = init_distributed(device, init_method=init_method, rank=rank, world_size=world_size)
    try:
        yield ctx
    except BaseException:
        shutdown(ctx)
        raise
    shutdown(ctx, synchronize=True)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


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
