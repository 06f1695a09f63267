"""How many intra-op threads a run uses, chosen before torch starts its OpenMP pool.

On a busy machine an OpenMP thread that finds no free core stalls the others at every parallel region (they
spin, waiting for it): with two threads on two cores already loaded by other jobs, a search step was many times
slower than with one. So the CLIs call `configure_threads` before they import torch:

- `--threads N` wins; else an `OMP_NUM_THREADS` the user exported; else the cores left free by the other jobs:
  usable cores minus the 1-minute load average, rounded, at least 1, split between torchrun's processes on this
  machine (`threads_for_load`; torchrun itself exports OMP_NUM_THREADS=1 for several processes per node when
  the user exported none, and that value then counts as the user's: the split applies under launchers that set
  LOCAL_WORLD_SIZE but not OMP_NUM_THREADS);
- the OpenMP wait policy follows that count, unless the user set `OMP_WAIT_POLICY` (`choose_wait_policy`):
  threads that fit the cores the other jobs leave free, or a single thread (it never waits at a barrier), keep
  the runtime's default (libgomp, which the pip wheels of torch use, spins briefly at a barrier, then sleeps;
  Intel's OpenMP keeps a thread awake for KMP_BLOCKTIME, 200 ms by default), because passive waits slow a
  2-thread step down on a quiet machine (docs/PERFORMANCE.md). Only more threads than the free cores (forced by `--threads` or an
  exported `OMP_NUM_THREADS`) get `OMP_WAIT_POLICY=PASSIVE`: a thread waiting at a barrier sleeps instead of
  spinning on a core that another thread or job needs.

No torch import here: setting the variables is only effective before torch (and its OpenMP runtime) loads.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import MutableMapping, Optional, Tuple

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_POLICY = "default"  # the runtime's own: nothing is exported


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # "--threads", "OMP_NUM_THREADS", or "load L on C cores"
    wait_policy: str  # the user's OMP_WAIT_POLICY, DEFAULT_POLICY or "PASSIVE"
    wait_reason: str  # why that policy, in a few words

    def describe(self) -> str:
        return (f"{self.threads} thread(s) ({self.reason}); "
                f"OpenMP wait policy {self.wait_policy.lower()} ({self.wait_reason})")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def current_load() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def threads_for_load(cores: int, load: Optional[float], processes: int = 1) -> int:
    """This process's share of the cores not busy with other runnable tasks: round((cores - load) / processes),
    between 1 and cores // processes (`processes`: the run's processes on this machine, e.g. torchrun's).

    Unknown load: an equal share of all cores."""
    processes = max(1, int(processes))
    share = max(1, max(1, int(cores)) // processes)
    if load is None or not math.isfinite(load):
        return share
    return max(1, min(share, int(math.floor((cores - load) / processes + 0.5))))


def _positive_int(text: str) -> Optional[int]:
    try:
        value = int(text)
    except (TypeError, ValueError):
        return None
    return value if value >= 1 else None


def choose_wait_policy(user_policy: Optional[str], threads: int, free: int, processes: int = 1,
                       load_known: bool = True) -> Tuple[str, str]:
    """(policy, why) for `threads` intra-op threads when the other jobs leave `free` cores to each of the run's
    `processes` (`load_known` False: `free` is only the cores' share, the load being unknown). Passive waits cost
    1.6-2.5x on a quiet machine and help only when the threads must share cores, so PASSIVE only for more threads
    than the free cores; the user's own policy always wins."""
    if user_policy:
        return user_policy, f"{WAIT_POLICY_VARIABLE} set by the user"
    if threads == 1:
        return DEFAULT_POLICY, "one thread never waits at a barrier"
    if threads <= free:
        return DEFAULT_POLICY, "threads fit the free cores" if load_known else "threads fit the cores; load unknown"
    per_process = " per process" if processes > 1 else ""
    return "PASSIVE", f"{threads} threads, {free} free core{'s' if free != 1 else ''}{per_process}"


def choose_threads(requested: Optional[int] = None, *, environ: Optional[MutableMapping[str, str]] = None,
                   cores: Optional[int] = None, load: Optional[float] = None) -> ThreadChoice:
    """The thread count and wait policy for this run (see the module doc); `cores`/`load` default to the
    machine's. Raises ValueError for requested < 1."""
    env = os.environ if environ is None else environ
    if requested is not None and int(requested) < 1:
        raise ValueError(f"--threads: must be at least 1, got {requested}")
    cores = usable_cores() if cores is None else cores
    load = current_load() if load is None else load
    processes = _positive_int(env.get("LOCAL_WORLD_SIZE", "")) or 1  # set by torchrun
    free = threads_for_load(cores, load, processes)
    exported = _positive_int(env.get("OMP_NUM_THREADS", ""))
    if requested is not None:
        threads, reason = int(requested), "--threads"
    elif exported is not None:
        threads, reason = exported, "OMP_NUM_THREADS"
    else:
        seen = "unknown load" if load is None else f"load {load:.2f}"
        shared = f", {processes} processes" if processes > 1 else ""
        threads, reason = free, f"{seen} on {cores} core(s){shared}"
    policy, why = choose_wait_policy(env.get(WAIT_POLICY_VARIABLE), threads, free, processes,
                                     load_known=load is not None and math.isfinite(load))
    return ThreadChoice(threads, reason, policy, why)


def apply_threads(choice: ThreadChoice, environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Export the choice for the OpenMP / MKL runtimes (read when torch loads) and, should torch already be
    loaded (e.g. called from Python), set its intra-op pool too. The default wait policy exports nothing: the
    variable stays unset, so the runtime's own applies (and the search's log records None)."""
    env = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        env[name] = str(choice.threads)
    if choice.wait_policy != DEFAULT_POLICY and not env.get(WAIT_POLICY_VARIABLE):  # an empty value is unset
        env[WAIT_POLICY_VARIABLE] = choice.wait_policy
    torch = sys.modules.get("torch")
    if torch is not None and environ is None:
        torch.set_num_threads(choice.threads)


def configure_threads(requested: Optional[int] = None) -> ThreadChoice:
    """Choose and apply; call before importing torch. Returns the choice (for the run's log)."""
    choice = choose_threads(requested)
    apply_threads(choice)
    return choice
