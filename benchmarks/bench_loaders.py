"""Loader throughput, each candidate measured against its baseline in the same run.

1. ImageNet: images/s of the DALI backend on the CPU against the PIL + DataLoader fallback
   (same files, same batch size, same thread/worker count), train transforms.  Goal: >= 1.3x.
2. CIFAR-10 proxy (10 % = 5,000 images): time per epoch of `ResidentLoader` against a torch
   DataLoader whose Dataset decodes each JPEG with PIL and augments it per item (pad-4 random crop,
   flip, to-tensor, normalise) with 2 worker processes.  Goal: >= 5x.  The resident loader's one-time
   cost (decoding the proxy into memory, copying it to the device) is reported separately.

Rounds alternate candidate and baseline (the baseline runs in pytest-benchmark's untimed `setup`), so
load from other processes on a shared machine hits both alike.  Ratios go to `benchmark.extra_info`;
nothing is asserted.

torch's intra-op threads in the measuring process are set to PROXYNAS_BENCH_THREADS (default 1): the
per-batch tensor ops are small, and on a shared, oversubscribed CPU every OpenMP barrier of a 2-thread
op can wait a whole scheduler slice (measured: 10x slower epochs).  Decoding parallelism is unchanged
(DALI threads, DataLoader worker processes).

    pytest benchmarks/bench_loaders.py -o addopts="" --benchmark-only   # pytest-benchmark
    python benchmarks/bench_loaders.py                                 # prints the ratios
"""
from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from proxynas_fast.loaders import ResidentLoader, build_imagenet_loader, dali_available  # noqa: E402

SHARED_DIR = Path(os.environ.get("PROXYNAS_SHARED", REPO_ROOT.parent / "shared"))
IMAGENET_DIR = SHARED_DIR / "data" / "imagenet-sample" / "train"
CIFAR_DIR = SHARED_DIR / "data" / "cifar10-jpeg"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

IMAGENET_IMAGES = 512
IMAGENET_BATCH = 64
IMAGENET_THREADS = 2
CIFAR_PROXY_FRACTION = 0.1
CIFAR_BATCH = 64
CIFAR_WORKERS = 2
ROUNDS = 3
INTRA_OP_THREADS = int(os.environ.get("PROXYNAS_BENCH_THREADS", "1"))


@contextlib.contextmanager
def intra_op_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------- data
def imagenet_sample(count: int = IMAGENET_IMAGES) -> tuple[list[str], list[int]]:
    class_dirs = sorted(p for p in IMAGENET_DIR.iterdir() if p.is_dir())
    pairs = [(str(f), label) for label, d in enumerate(class_dirs) for f in sorted(d.glob("*.JPEG"))]
    return [f for f, _ in pairs[:count]], [label for _, label in pairs[:count]]


def cifar_proxy(fraction: float = CIFAR_PROXY_FRACTION, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """A seeded random `fraction` of the CIFAR-10 training JPEGs: (paths, labels)."""
    rows = [line.rstrip("\n").split("\t") for line in (CIFAR_DIR / "train_order.txt").read_text().splitlines()]
    rows = [r for r in rows if len(r) == 3 and r[0].isdigit()]
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), int(round(fraction * len(rows))), replace=False))
    return [str(CIFAR_DIR / rows[i][1]) for i in pick], np.array([int(rows[i][2]) for i in pick], dtype=np.int64)


def decode_all(paths: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])


class PerItemCifarJpegs(Dataset):
    """The usual baseline: decode the JPEG and augment it per item, in worker processes."""

    def __init__(self, paths, labels, mean, std, pad=4):
        self.paths, self.labels, self.pad = paths, labels, pad
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = np.asarray(Image.open(self.paths[i]).convert("RGB"), dtype=np.uint8)
        p = self.pad
        padded = np.pad(image, ((p, p), (p, p), (0, 0)))
        y, x = random.randint(0, 2 * p), random.randint(0, 2 * p)  # DataLoader seeds `random` per worker
        crop = padded[y:y + image.shape[0], x:x + image.shape[1]]
        if random.random() < 0.5:
            crop = crop[:, ::-1]
        chw = crop.transpose(2, 0, 1).astype(np.float32) / 255.0
        return torch.from_numpy((chw - self.mean) / self.std), int(self.labels[i])


# ---------------------------------------------------------------------------- timing
def time_epoch(loader) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    for _, y in loader:
        count += int(y.shape[0])
    return time.perf_counter() - start, count


class Alternating:
    """Times `baseline` epochs between the candidate's rounds (pytest-benchmark's untimed setup)."""

    def __init__(self, baseline):
        self.baseline = baseline
        self.baseline_seconds: list[float] = []

    def setup(self):
        seconds, _ = time_epoch(self.baseline)
        self.baseline_seconds.append(seconds)


def imagenet_loaders(files, labels):
    common = dict(train=True, device="cpu", num_threads=IMAGENET_THREADS, seed=0)
    dali = build_imagenet_loader(files, labels, IMAGENET_BATCH, backend="dali", **common)
    pil = build_imagenet_loader(files, labels, IMAGENET_BATCH, backend="pil", **common)
    return dali, pil


def cifar_loaders(paths, labels):
    start = time.perf_counter()
    images = decode_all(paths)
    resident = ResidentLoader(images, labels, CIFAR_BATCH, device="cpu", mean=CIFAR_MEAN, std=CIFAR_STD)
    one_time_seconds = time.perf_counter() - start
    baseline = DataLoader(PerItemCifarJpegs(paths, labels, CIFAR_MEAN, CIFAR_STD), batch_size=CIFAR_BATCH,
                          shuffle=True, num_workers=CIFAR_WORKERS, persistent_workers=True)
    return resident, baseline, one_time_seconds


# ---------------------------------------------------------------------------- pytest-benchmark
def test_imagenet_dali_cpu_vs_pil(benchmark):
    import pytest

    if not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    with intra_op_threads(INTRA_OP_THREADS):
        _imagenet_dali_cpu_vs_pil(benchmark)


def _imagenet_dali_cpu_vs_pil(benchmark):
    files, labels = imagenet_sample()
    dali, pil = imagenet_loaders(files, labels)
    time_epoch(dali), time_epoch(pil)  # warm-up: page cache, worker start, DALI initialisation
    alternating = Alternating(pil)
    benchmark.pedantic(time_epoch, args=(dali,), setup=alternating.setup, rounds=ROUNDS, iterations=1)
    dali_seconds = benchmark.stats.stats.median
    pil_seconds = statistics.median(alternating.baseline_seconds)
    benchmark.extra_info.update({
        "images": len(files), "batch_size": IMAGENET_BATCH, "threads": IMAGENET_THREADS,
        "intra_op_threads": torch.get_num_threads(),
        "dali_images_per_s": len(files) / dali_seconds, "pil_images_per_s": len(files) / pil_seconds,
        "speedup_dali_over_pil": pil_seconds / dali_seconds, "goal": 1.3})


def test_resident_vs_dataloader_cifar10_proxy(benchmark):
    with intra_op_threads(INTRA_OP_THREADS):
        _resident_vs_dataloader(benchmark)


def _resident_vs_dataloader(benchmark):
    paths, labels = cifar_proxy()
    resident, baseline, one_time_seconds = cifar_loaders(paths, labels)
    time_epoch(resident), time_epoch(baseline)  # warm-up
    alternating = Alternating(baseline)
    benchmark.pedantic(time_epoch, args=(resident,), setup=alternating.setup, rounds=ROUNDS, iterations=1)
    resident_seconds = benchmark.stats.stats.median
    baseline_seconds = statistics.median(alternating.baseline_seconds)
    benchmark.extra_info.update({
        "images": len(paths), "batch_size": CIFAR_BATCH, "baseline_workers": CIFAR_WORKERS,
        "intra_op_threads": torch.get_num_threads(), "resident_epoch_s": resident_seconds,
        "dataloader_epoch_s": baseline_seconds, "resident_one_time_load_s": one_time_seconds,
        "speedup_resident_over_dataloader": baseline_seconds / resident_seconds, "goal": 5.0})


# ---------------------------------------------------------------------------- script mode
def _alternate(candidate, baseline, rounds=ROUNDS) -> tuple[float, float]:
    time_epoch(candidate), time_epoch(baseline)
    candidate_s, baseline_s = [], []
    for _ in range(rounds):
        baseline_s.append(time_epoch(baseline)[0])
        candidate_s.append(time_epoch(candidate)[0])
    return statistics.median(candidate_s), statistics.median(baseline_s)


def main() -> None:
    with intra_op_threads(INTRA_OP_THREADS):
        _main()


def _main() -> None:
    print(f"torch intra-op threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")
    if dali_available():
        files, labels = imagenet_sample()
        dali_s, pil_s = _alternate(*imagenet_loaders(files, labels))
        print(f"ImageNet sample, {len(files)} images, batch {IMAGENET_BATCH}, {IMAGENET_THREADS} threads/workers:"
              f" DALI CPU {len(files) / dali_s:.1f} img/s, PIL {len(files) / pil_s:.1f} img/s,"
              f" ratio {pil_s / dali_s:.2f}x (goal 1.3x)")
    else:
        print("NVIDIA DALI is not installed: ImageNet comparison skipped")
    paths, labels = cifar_proxy()
    resident, baseline, one_time = cifar_loaders(paths, labels)
    resident_s, baseline_s = _alternate(resident, baseline)
    print(f"CIFAR-10 proxy, {len(paths)} images, batch {CIFAR_BATCH}: resident {resident_s * 1e3:.1f} ms/epoch"
          f" (one-time load {one_time:.2f} s), DataLoader ({CIFAR_WORKERS} workers) {baseline_s * 1e3:.1f} ms/epoch,"
          f" ratio {baseline_s / resident_s:.1f}x (goal 5x)")


if __name__ == "__main__":
    main()
