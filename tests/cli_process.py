"""Tests that drive a CLI in a child process: wait until it has written something, then interrupt it."""
from __future__ import annotations

import signal
import time
from subprocess import Popen
from typing import Callable


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
