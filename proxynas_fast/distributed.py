"""The process group of a multi-process run (torchrun), shared by the stages that run on several processes
(scoring, search): `DistContext` says which rank this process is, `process_group` joins and leaves the group.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them (or
takes an explicit init_method such as file:///tmp/x for tests) and picks the backend: NCCL on CUDA, gloo on
CPU. Only rank 0 writes files. The search's collectives and DDP wrapper are in `proxynas_fast.search.distributed`.

Faults: every collective waits at most `timeout_s` (the CLIs' --dist-timeout, default DEFAULT_TIMEOUT_S) for
the other ranks; a rank that froze (SIGSTOP, a hung file system) makes the others fail after that long instead of
hanging forever, and a rank that died makes them fail at once (its sockets close). `process_group` turns either
failure into `RanksLost`, one line naming this rank and the cause, which the CLIs complete with what was saved
and the command that resumes.
"""
from __future__ import annotations

import datetime
import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist

# How long a collective waits for the other ranks: longer than any step or checkpoint write of a healthy run
# (rank 0 writes the outputs while the others wait at the barrier), short enough that a frozen rank does not
# hold the others for the rest of the job.
DEFAULT_TIMEOUT_S = 1800.0
# What gloo and NCCL say when a peer died or never answered.
_LOST_RANK_SIGNS = ("Timed out", "timed out", "Connection reset", "Connection closed", "Broken pipe",
                    "Connection refused", "NCCL communicator was aborted", "ProcessGroupNCCL", "Socket Timeout")


class RanksLost(RuntimeError):
    """Another rank died or stopped answering within the process group's timeout."""


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


def restarted_by_torchrun() -> bool:
    """Whether torchrun (--max-restarts) started this process again after a failure of the job."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


def _store_of_this_attempt(rank: int, world_size: int, timeout: datetime.timedelta):
    """torchrun's store, with this attempt's keys under a prefix of their own: the agent's store outlives a failed
    attempt, and the gloo addresses that attempt's ranks left in it sent the restarted ranks to dead peers
    ("connectFullMesh failed ... Connection refused")."""
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
    return dist.PrefixStore(f"proxynas_fast/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def init_distributed(device: str = "auto", *, init_method: Optional[str] = None, rank: Optional[int] = None,
                     world_size: Optional[int] = None, timeout_s: Optional[float] = None) -> DistContext:
    """A DistContext for this process; joins the process group when there is more than one process. Its
    collectives wait at most `timeout_s` (default DEFAULT_TIMEOUT_S) for the other ranks."""
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
        timeout = datetime.timedelta(seconds=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
        if init_method in (None, "env://") and restarted_by_torchrun():
            dist.init_process_group(backend, store=_store_of_this_attempt(rank, world_size, timeout), rank=rank,
                                    world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
                                    timeout=timeout)
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


def lost_rank_error(e: BaseException) -> bool:
    """Whether `e`, raised by a collective, says another rank died or did not answer in time."""
    if isinstance(e, RanksLost):
        return True
    return isinstance(e, RuntimeError) and any(sign in str(e) for sign in _LOST_RANK_SIGNS)


def describe_lost_ranks(ctx: DistContext, e: BaseException, timeout_s: Optional[float]) -> str:
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    what = ("another rank did not answer" if "imed out" in str(e) else "another rank died")
    return (f"rank {ctx.rank} of {ctx.world_size}: {what} (a rank that dies ends the run at once; one that "
            f"freezes, after --dist-timeout {timeout:g} s)")


@contextmanager
def process_group(device: str = "auto", *, init_method: Optional[str] = None, rank: Optional[int] = None,
                  world_size: Optional[int] = None, timeout_s: Optional[float] = None) -> Iterator[DistContext]:
    """`init_distributed` for the body, then `shutdown`: after every rank has arrived when the body ended
    normally, at once when it raised. A collective failing because another rank died or froze is re-raised as
    `RanksLost` (one line)."""
    ctx = init_distributed(device, init_method=init_method, rank=rank, world_size=world_size, timeout_s=timeout_s)
    try:
        yield ctx
    except BaseException as e:
        shutdown(ctx)
        if ctx.enabled and not isinstance(e, RanksLost) and lost_rank_error(e):
            raise RanksLost(describe_lost_ranks(ctx, e, timeout_s)) from None
        raise
    shutdown(ctx, synchronize=True)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()
