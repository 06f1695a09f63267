"""The ImageNet loader benchmark's projection and summary line (benchmarks/bench_imagenet_loader.py); no timing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_imagenet_loader as bench  # noqa: E402


def test_projection_is_epochs_over_store_rate_plus_one_decode():
    # 50 epochs x 128k images at 400 images per CPU second per core on 16 cores: 1000 s; the decode of 128k at
    # 200 per core: 40 s; together 1040 s
    assert bench.projected_floor_hours(400.0, 200.0) == pytest.approx(1040 / 3600)
    assert bench.projected_floor_hours(400.0, 200.0, images=1000, epochs=2, cores=1) == pytest.approx(10 / 3600)
    assert (bench.PROJECTED_IMAGES, bench.PROJECTED_EPOCHS, bench.PROJECTED_CORES) == (128_000, 50, 16)


def test_summary_line_format():
    assert bench.summary_line(12.345, 0.456) == ("store/pil per-core ratio: 12.35x; projected data floor "
                                                 "(128k proxy, 50 epochs, 16 cores): 0.46 h")


def test_per_core_rates_count_cpu_seconds():
    epochs = [{"images": 64, "wall_s": 2.0, "cpu_s": 0.5}, {"images": 64, "wall_s": 2.0, "cpu_s": 0.3}]
    assert bench.per_core(epochs) == pytest.approx(128 / 0.8)
    assert bench.per_second(epochs) == pytest.approx(32.0)
