"""Tests that drive a CLI in a child process: the child's environment (`child_env`, the one way tests build it);
wait until it has written something, then interrupt it."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from subprocess import Popen
from typing import Callable, Dict


def wait_for(predicate: Callable[[], bool], proc: Popen, timeout: float = 600) -> None:
    """Poll `predicate` until it holds; fail if the child ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def interrupt_when(predicate: Callable[[], bool], proc: Popen, timeout: float = 600,
                   sig: int = signal.SIGINT) -> str:
    """Ctrl-C (SIGINT, or `sig`) the child once `predicate` holds and return its stderr; the child never outlives
    the test."""
    try:
        wait_for(predicate, proc, timeout)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


REPO = Path(__file__).resolve().parents[1]


def child_env(*extra_paths, **overrides) -> Dict[str, str]:
    """The environment of every child process a test starts (CLIs, torchrun ranks, probes): this process's
    environment, the checkout first on PYTHONPATH (then `extra_paths`, then an inherited PYTHONPATH), one OpenMP
    thread (children run tiny configurations; on a busy machine a second thread only spins), then `overrides`."""
    path = [str(REPO), *map(str, extra_paths), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)), OMP_NUM_THREADS="1")
    env.update({key: str(value) for key, value in overrides.items()})
    return env
