"""The process group of a multi-process run (torchrun), shared by the stages that run on several processes
(scoring, search): `DistContext` says which rank this process is, `process_group` joins and leaves the group.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them (or
takes an explicit init_method such as file:///tmp/x for tests) and picks the backend: NCCL on CUDA, gloo on
CPU. Only rank 0 writes files. The search's collectives and DDP wrapper are in `proxynas_fast.search.distributed`.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

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
