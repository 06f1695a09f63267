"""Progress of a loop: a tqdm bar on a terminal, plain lines when stderr is redirected (a log file, a pipe).

A redirected run prints a line after the first step (the time per step shows at once), then one every
`line_seconds()` (30 s, or $PROXYNAS_PROGRESS_SECONDS) and one after the last step (the loop's whole time), each
with the step count, the elapsed time, an estimate of the time left and the latest loss/accuracy the loop
reported, so that a log file shows progress within an epoch. `LineProgress` has the part of tqdm's interface the
loops use (update, set_postfix, close), so a loop does not care which one it got. `leave_open_bars()` ends the line
of any bar still on screen, so that an error printed after it starts on a line of its own.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, TextIO

DEFAULT_LINE_SECONDS = 30.0
LINE_SECONDS_VARIABLE = "PROXYNAS_PROGRESS_SECONDS"


def line_seconds() -> float:
    """Seconds between progress lines: $PROXYNAS_PROGRESS_SECONDS when it is a number >= 0, else 30."""
    text = os.environ.get(LINE_SECONDS_VARIABLE, "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_LINE_SECONDS
    return value if value >= 0 else DEFAULT_LINE_SECONDS


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """One line per `every` seconds (and after the first and the last step): 'epoch 1/3: step 5/40, 12s, ~84s left, loss=...'."""

    def __init__(self, total: int, description: str, *, stream: Optional[TextIO] = None,
                 every: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.total = int(total)
        self.description = description
        self.stream = stream
        self.every = line_seconds() if every is None else float(every)
        self.clock = clock
        self.start = clock()
        self.last_line: Optional[float] = None
        self.done = 0
        self.postfix = ""

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        last_step = self.done >= self.total
        if self.last_line is None or now - self.last_line >= self.every or last_step:
            self.last_line = now
            self._write(now)

    def _write(self, now: float) -> None:
        elapsed = now - self.start
        text = f"{self.description}: step {self.done}/{self.total}, {elapsed:.0f}s"
        if 0 < self.done < self.total:
            text += f", ~{elapsed / self.done * (self.total - self.done):.0f}s left"
        if self.postfix:
            text += f", {self.postfix}"
        stream = self.stream if self.stream is not None else sys.stderr
        print(text, file=stream, flush=True)

    def close(self) -> None:
        pass


def open_progress(enabled: bool, total: int, description: str, *, stream: Optional[TextIO] = None):
    """None when disabled; a tqdm bar when `stream` (default stderr) is a terminal; else a LineProgress."""
    if not enabled:
        return None
    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=description, leave=False, file=stream, dynamic_ncols=True)
    return LineProgress(total, description, stream=stream)


def leave_open_bars() -> None:
    """Close every tqdm bar still open, its last state kept on its own line: what is printed next (a CLI's
    `error:` or `interrupted:` line, raised out of a loop that never closed its bar) starts on a fresh line."""
    module = sys.modules.get("tqdm")
    if module is None:
        return  # tqdm was never imported: no bar is open
    for bar in list(getattr(module.tqdm, "_instances", ())):
        bar.leave = True
        bar.close()
