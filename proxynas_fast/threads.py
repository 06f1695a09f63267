"""How many intra-op threads a run uses, chosen before torch starts its OpenMP pool.

On a busy machine an OpenMP thread that finds no free core stalls the others at every parallel region (they
spin, waiting for it): with two threads on two cores already loaded by other jobs, a search step was many times
slower than with one. So the CLIs call `configure_threads` before they import torch:

- `--threads N` wins; else an `OMP_NUM_THREADS` the user exported; else the cores left free by the other jobs:
  usable cores minus the 1-minute load average, rounded, at least 1, split between torchrun's processes on this
  machine (`threads_for_load`);
- `OMP_WAIT_POLICY=PASSIVE` (unless the user set a policy): threads waiting at a barrier sleep instead of
  spinning, so an oversubscribed core is not burnt in waits.

No torch import here: setting the variables is only effective before torch (and its OpenMP runtime) loads.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import MutableMapping, Optional

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # "--threads", "OMP_NUM_THREADS", or "load L on C cores"
    wait_policy: str

    def describe(self) -> str:
        return f"{self.threads} thread(s) ({self.reason}; OpenMP wait policy {self.wait_policy.lower()})"


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


def choose_threads(requested: Optional[int] = None, *, environ: Optional[MutableMapping[str, str]] = None,
                   cores: Optional[int] = None, load: Optional[float] = None) -> ThreadChoice:
    """The thread count and wait policy for this run (see the module doc); `cores`/`load` default to the
    machine's. Raises ValueError for requested < 1."""
    env = os.environ if environ is None else environ
    policy = env.get(WAIT_POLICY_VARIABLE) or "PASSIVE"
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"--threads: must be at least 1, got {requested}")
        return ThreadChoice(int(requested), "--threads", policy)
    exported = _positive_int(env.get("OMP_NUM_THREADS", ""))
    if exported is not None:
        return ThreadChoice(exported, "OMP_NUM_THREADS", policy)
    cores = usable_cores() if cores is None else cores
    load = current_load() if load is None else load
    processes = _positive_int(env.get("LOCAL_WORLD_SIZE", "")) or 1  # set by torchrun
    threads = threads_for_load(cores, load, processes)
    seen = "unknown load" if load is None else f"load {load:.2f}"
    shared = f", {processes} processes" if processes > 1 else ""
    return ThreadChoice(threads, f"{seen} on {cores} core(s){shared}", policy)


def apply_threads(choice: ThreadChoice, environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Export the choice for the OpenMP / MKL runtimes (read when torch loads) and, should torch already be
    loaded (e.g. called from Python), set its intra-op pool too."""
    env = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        env[name] = str(choice.threads)
    env.setdefault(WAIT_POLICY_VARIABLE, choice.wait_policy)
    torch = sys.modules.get("torch")
    if torch is not None and environ is None:
        torch.set_num_threads(choice.threads)


def configure_threads(requested: Optional[int] = None) -> ThreadChoice:
    """Choose and apply; call before importing torch. Returns the choice (for the run's log)."""
    choice = choose_threads(requested)
    apply_threads(choice)
    return choice
