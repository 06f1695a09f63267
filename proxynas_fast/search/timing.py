"""Where a search run's wall time goes: data, search steps, validation, outputs.

`PhaseTimes` adds up host wall time (`time.perf_counter`) around whole phases only, so timing adds no device
synchronisation inside the step loop: a training or validation phase ends with the epoch's own reduction of its
metrics (one host read of the loss sums), which waits for the device work of that phase anyway.

Parts (each also broken down in a `*_detail` mapping):
  data          loading/decoding the training set (`load`), scoring it (`score`), reading or selecting and
                splitting the proxy set (`select`), building the batch loaders (`loaders`), of which the ImageNet
                image stores' one-time decode of the proxy's files is named (`decode`), and drawing the
                training batches in every epoch (`batches`: the host time of the loaders' next(), see
                `loop.EpochMetrics.data_seconds`);
  search_steps  the architecture and weight steps of every epoch;
  validation    the per-epoch validation passes;
  outputs       checkpoints (`checkpoints`), epoch records in log.jsonl/TensorBoard (`log`), genotype.json and
                alphas.pt (`genotype`), cell drawings (`graphs`), config.json (`config`).
Whatever else the run does is `other` = wall - the four parts; of it, building the supernet and its optimizers
is named (`model`: the first torch.optim optimizer of a process also imports torch._dynamo, seconds of it).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

TIME_PARTS = ("data", "search_steps", "validation", "outputs")
_DIGITS = 4


def _down(x: float) -> float:
    return math.floor(x * 10**_DIGITS) / 10**_DIGITS


def _up(x: float) -> float:
    return math.ceil(x * 10**_DIGITS) / 10**_DIGITS


class PhaseTimes:
    """Seconds per part of a run (TIME_PARTS), with named details, from construction to `split()`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.parts: Dict[str, float] = dict.fromkeys(TIME_PARTS, 0.0)
        self.details: Dict[str, Dict[str, float]] = {part: {} for part in (*TIME_PARTS, "other")}

    def add(self, part: str, seconds: float, detail: Optional[str] = None) -> None:
        """Count `seconds` to `part` (and its `detail`); "other" takes only named details (it is the rest)."""
        if part not in self.details:
            raise KeyError(f"unknown time part {part!r}; one of {', '.join(self.details)}")
        if part != "other":
            self.parts[part] += seconds
        if detail is not None:
            self.details[part][detail] = self.details[part].get(detail, 0.0) + seconds

    def move_detail(self, part: str, source: str, target: str, seconds: float) -> None:
        """Name `seconds` of `part`'s `source` detail `target` instead (the part's total stays)."""
        if seconds <= 0:
            return
        detail = self.details[part]
        seconds = min(seconds, detail.get(source, 0.0))
        detail[source] = detail.get(source, 0.0) - seconds
        detail[target] = detail.get(target, 0.0) + seconds

    @contextmanager
    def phase(self, part: str, detail: Optional[str] = None) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - start, detail)

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def split(self) -> Dict[str, object]:
        """{"wall", the four parts, "other", "<part>_detail"...} in seconds; the parts are rounded down and the
        wall time up (4 decimals), so the parts never add up to more than the wall time."""
        wall = self.wall()
        out: Dict[str, object] = {"wall": _up(wall)}
        out.update({part: _down(seconds) for part, seconds in self.parts.items()})
        out["other"] = _down(max(wall - sum(self.parts.values()), 0.0))
        for part, detail in self.details.items():
            if detail:
                out[f"{part}_detail"] = {name: _down(seconds) for name, seconds in detail.items()}
        return out


def describe_split(split: Dict[str, object]) -> str:
    """One line: `time split: 195.3 s = data 12.1 s (load 8.0, ...) + search steps ... + other 3.9 s`."""

    def part(name: str) -> str:
        detail = split.get(f"{name}_detail") or {}
        inner = ", ".join(f"{k} {v:.1f}" for k, v in detail.items())
        return f"{name.replace('_', ' ')} {split[name]:.1f} s" + (f" ({inner})" if inner else "")

    parts = " + ".join(part(name) for name in (*TIME_PARTS, "other"))
    return f"time split: {split['wall']:.1f} s = {parts}"
