"""The interleaved ratio of benchmarks/bench_search_step.py: rounds alternate the order of the backends and the
speed ratio pairs the times of one round (a fake clock makes the timings exact)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("bench_search_step")


class FakeClock:
    """Time advances only when a step runs: step `name` takes durations[name][call index]."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rounds_alternate_the_order_and_time_each_step_alone():
    clock, calls = FakeClock(), []
    durations = {"reference": [4.0, 6.0, 5.0, 9.0], "fused": [1.0, 3.0, 2.0, 3.0]}

    def step(name):
        def run():
            clock.now += durations[name][sum(c == name for c in calls)]
            calls.append(name)
        return run

    times = bench.interleaved_times({"reference": step("reference"), "fused": step("fused")}, 4, clock=clock)
    assert calls == ["reference", "fused", "fused", "reference", "reference", "fused", "fused", "reference"]
    assert times == durations
    # per round 4, 2, 2.5, 3 -> median 2.75; the ratio of the medians (5.5 / 2.5 = 2.2) is another number
    assert bench.paired_speedup(times) == pytest.approx(2.75)


def test_counted_steps_log_cpu_time_and_the_pages_they_map():
    torch = pytest.importorskip("torch")
    log = []

    def allocate():  # 64 MiB: above glibc's largest mmap threshold (32 MiB), so mapped afresh by every call
        torch.empty(16 * 2**20).fill_(1.0)

    def spin():  # CPU time without allocation
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass

    bench.counted(allocate, log)()
    bench.counted(spin, log)()
    (_, faults_alloc), (cpu_spin, faults_spin) = log
    assert faults_alloc > 16 * 2**20 * 4 // 4096 // 2  # most of its 16,384 pages
    assert faults_spin < 100
    assert cpu_spin >= 0.05
