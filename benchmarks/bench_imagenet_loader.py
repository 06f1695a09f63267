"""ImageNet loaders on the 1,000-image sample, side by side in one run: the paper's loader, DALI on the CPU, the store.

* paper: an ImageFolder-style Dataset that opens each JPEG with PIL in every epoch and applies, per item,
  RandomResizedCrop(224), RandomHorizontalFlip, ColorJitter(0.4, 0.4, 0.4, 0.2) (imagenet_pil's PIL versions of
  torchvision's ops), ToTensor and Normalize, batched by a torch DataLoader with 2 worker processes (the authors'
  train_search_proxy_data_imagenet.py settings).
* dali: `build_imagenet_loader(backend="dali")` on the CPU with 2 threads, when NVIDIA DALI imports.
* store: `build_imagenet_loader(backend="store")`: the one-time decode into the image store (timed apart, on
  `DECODE_THREADS` threads), then epochs that read the store and augment whole batches (the fused
  `proxynas_fast::augment_crops` kernel when the extension has it, else torch ops) on `INTRA_OP_THREADS` intra-op
  thread(s).

Per-core rate = images / CPU seconds (user + system of this process and of the worker processes it reaped, from
getrusage), so it counts the cores a loader really keeps busy, also on a machine shared with other jobs.  Epochs
alternate (the paper's and DALI's run in pytest-benchmark's untimed setup before each timed store epoch).

Projection (the data floor of the paper's ImageNet search on a 16-core host, data loading alone):

    floor_h = (EPOCHS * IMAGES / (store_per_core * CORES) + IMAGES / (decode_per_core * CORES)) / 3600

with IMAGES = 128,000 (a 10% proxy of ImageNet), EPOCHS = 50, CORES = 16, store_per_core the store epochs' images
per CPU second (augmenting on the CPU) and decode_per_core the store build's images per CPU second.  The ratio is
store_per_core / paper_per_core.  Also reported (not in the last line): the store's CPU share when the batches are
augmented on a GPU, i.e. reading the uint8 batches from the store alone (`store_read`).  The last line printed reads
`store/pil per-core ratio: N.NNx; projected data floor (128k proxy, 50 epochs, 16 cores): H.HH h`.

    python benchmarks/bench_imagenet_loader.py [--json PATH]     # runs the pytest-benchmark test, then that line
    pytest benchmarks/bench_imagenet_loader.py -o addopts="" --benchmark-only -s
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from proxynas_fast.loaders import build_imagenet_loader, dali_available  # noqa: E402
from proxynas_fast.loaders.image_store import DEFAULT_STORE_SIZE  # noqa: E402
from proxynas_fast.loaders.imagenet_base import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from proxynas_fast.loaders.imagenet_pil import train_transform  # noqa: E402
from proxynas_fast.threads import current_load, threads_for_load, usable_cores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loaders import intra_op_threads  # noqa: E402

SHARED_DIR = Path(os.environ.get("PROXYNAS_SHARED", REPO_ROOT.parent / "shared"))
IMAGENET_DIR = SHARED_DIR / "data" / "imagenet-sample" / "train"

EPOCH_IMAGES = int(os.environ.get("PROXYNAS_BENCH_IMAGES", "256"))  # per timed epoch
BATCH = 64
PAPER_WORKERS = 2
DALI_THREADS = 2
INTRA_OP_THREADS = int(os.environ.get("PROXYNAS_BENCH_THREADS", "1"))
DECODE_THREADS = max(1, threads_for_load(usable_cores(), current_load()))
ROUNDS = int(os.environ.get("PROXYNAS_BENCH_ROUNDS", "3"))
CROP = 224

PROJECTED_IMAGES = 128_000
PROJECTED_EPOCHS = 50
PROJECTED_CORES = 16


# ---------------------------------------------------------------------------- the projection
def projected_floor_hours(store_per_core: float, decode_per_core: float, images: int = PROJECTED_IMAGES,
                          epochs: int = PROJECTED_EPOCHS, cores: int = PROJECTED_CORES) -> float:
    """Hours of data loading for `epochs` epochs of `images` from the store plus their one-time decode, on `cores`
    cores at the measured per-core rates (images per CPU second)."""
    epochs_s = epochs * images / (store_per_core * cores)
    decode_s = images / (decode_per_core * cores)
    return (epochs_s + decode_s) / 3600


def summary_line(ratio: float, floor_hours: float) -> str:
    return (f"store/pil per-core ratio: {ratio:.2f}x; projected data floor (128k proxy, 50 epochs, 16 cores): "
            f"{floor_hours:.2f} h")


# ---------------------------------------------------------------------------- the paper's loader
class PaperImageFolder(Dataset):
    """ImageFolder + the paper's train transforms, per item: PIL decode, RandomResizedCrop(224), flip,
    ColorJitter(0.4, 0.4, 0.4, 0.2), ToTensor, Normalize."""

    def __init__(self, files, labels, size=CROP, seed=0):
        self.files, self.labels, self.size, self.seed = files, labels, size, seed
        self.mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as image:
            image = image.convert("RGB")
        pixels = train_transform(image, np.random.default_rng([self.seed, i]), self.size)
        chw = pixels.transpose(2, 0, 1).astype(np.float32) / 255.0  # ToTensor
        return torch.from_numpy((chw - self.mean) / self.std), self.labels[i]  # Normalize


def paper_loader(files, labels):
    return DataLoader(PaperImageFolder(files, labels), batch_size=BATCH, shuffle=True, num_workers=PAPER_WORKERS)


# ---------------------------------------------------------------------------- measuring
def imagenet_sample(count: int | None = None) -> tuple[list[str], list[int]]:
    class_dirs = sorted(p for p in IMAGENET_DIR.iterdir() if p.is_dir())
    pairs = [(str(f), label) for label, d in enumerate(class_dirs) for f in sorted(d.glob("*.JPEG"))]
    pairs = pairs if count is None else [pairs[i] for i in np.linspace(0, len(pairs) - 1, count).astype(int)]
    return [f for f, _ in pairs], [label for _, label in pairs]


def cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers are joined each epoch)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured_epoch(loader) -> dict:
    """One epoch: {"images", "wall_s", "cpu_s"}."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(getattr(loader, "epoch", 0) + 1)
    cpu, start, count = cpu_seconds(), time.perf_counter(), 0
    for _, y in loader:
        count += int(y.shape[0])
    return {"images": count, "wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu}


def per_core(epochs: list[dict]) -> float:
    return sum(e["images"] for e in epochs) / sum(e["cpu_s"] for e in epochs)


def per_second(epochs: list[dict]) -> float:
    return sum(e["images"] for e in epochs) / sum(e["wall_s"] for e in epochs)


class Baselines:
    """The paper's loader (and DALI's) epoch before each timed store epoch (pytest-benchmark's untimed setup)."""

    def __init__(self, loaders: dict):
        self.loaders = loaders
        self.epochs: dict = {name: [] for name in loaders}

    def setup(self):
        for name, loader in self.loaders.items():
            self.epochs[name].append(measured_epoch(loader))


def store_read_epoch(loader) -> dict:
    """The CPU side of a store epoch whose augmentation runs on a GPU: reading its uint8 batches from the store."""
    positions = loader.rank_positions()
    cpu, start = cpu_seconds(), time.perf_counter()
    for first in range(0, len(positions), BATCH):
        torch.from_numpy(loader.store.gather(positions[first:first + BATCH]))
    return {"images": len(positions), "wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu}


def build_store(files, labels, root: Path):
    """The store loader over `files` and its one-time decode: {"images", "wall_s", "cpu_s"}."""
    os.environ["PROXYNAS_IMAGE_STORE"] = str(root)
    cpu, start = cpu_seconds(), time.perf_counter()
    loader = build_imagenet_loader(files, labels, BATCH, backend="store", num_threads=DECODE_THREADS,
                                   image_size=CROP, store_size=DEFAULT_STORE_SIZE, drop_last=False)
    decode = {"images": len(files), "wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu,
              "threads": DECODE_THREADS, "store_bytes": loader.store.nbytes}
    return loader, decode


# ---------------------------------------------------------------------------- pytest-benchmark
def test_imagenet_loader_paper_dali_store(benchmark):
    with intra_op_threads(INTRA_OP_THREADS), tempfile.TemporaryDirectory() as root:
        _run(benchmark, Path(root))


def _run(benchmark, root: Path):
    all_files, all_labels = imagenet_sample()
    _, decode = build_store(all_files, all_labels, root / "all")  # the one-time decode of the whole sample
    files, labels = imagenet_sample(EPOCH_IMAGES)
    store, _ = build_store(files, labels, root / "epochs")
    baselines = {"paper": paper_loader(files, labels)}
    if dali_available():
        baselines["dali"] = build_imagenet_loader(files, labels, BATCH, backend="dali", num_threads=DALI_THREADS,
                                                  image_size=CROP, device="cpu")
    for loader in (store, *baselines.values()):
        measured_epoch(loader)  # warm-up: page cache, worker start, DALI initialisation
    alternating = Baselines(baselines)
    store_epochs = []

    def store_epoch():
        store_epochs.append(measured_epoch(store))

    benchmark.pedantic(store_epoch, setup=alternating.setup, rounds=ROUNDS, iterations=1)
    rates = {"store": per_core(store_epochs), **{k: per_core(v) for k, v in alternating.epochs.items()},
             "store_read": per_core([store_read_epoch(store) for _ in range(ROUNDS)])}
    decode_per_core = decode["images"] / decode["cpu_s"]
    ratio = rates["store"] / rates["paper"]
    floor = projected_floor_hours(rates["store"], decode_per_core)
    benchmark.extra_info.update({
        "epoch_images": EPOCH_IMAGES, "batch_size": BATCH, "crop": CROP, "store_size": DEFAULT_STORE_SIZE,
        "paper_workers": PAPER_WORKERS, "dali_threads": DALI_THREADS if "dali" in baselines else None,
        "store_intra_op_threads": INTRA_OP_THREADS, "decode_threads": DECODE_THREADS, "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "images_per_cpu_s": rates, "images_per_wall_s": {"store": per_second(store_epochs),
                                                          **{k: per_second(v) for k, v in alternating.epochs.items()}},
        "epochs": {"store": store_epochs, **alternating.epochs},
        "one_time_decode": {**decode, "images_per_cpu_s": decode_per_core,
                            "images_per_wall_s": decode["images"] / decode["wall_s"],
                            "bytes_per_image": decode["store_bytes"] / decode["images"]},
        "store_disk_gb_per_100k_images": decode["store_bytes"] / decode["images"] * 100_000 / 1e9,
        "projection": {"images": PROJECTED_IMAGES, "epochs": PROJECTED_EPOCHS, "cores": PROJECTED_CORES,
                       "floor_hours": floor, "formula": "(epochs*images/(store_per_core*cores) + "
                                                        "images/(decode_per_core*cores))/3600"},
        "store_over_paper_per_core": ratio, "goal_ratio": 10.0, "goal_floor_hours": 1.0,
        "summary": summary_line(ratio, floor)})
    print()
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} images per CPU second")
    print(f"one-time decode: {decode['images']} images in {decode['wall_s']:.1f} s on {DECODE_THREADS} thread(s), "
          f"{decode_per_core:.1f} images per CPU second, {decode['store_bytes'] / decode['images'] / 1e3:.1f} kB/image")
    print(summary_line(ratio, floor))


# ---------------------------------------------------------------------------- script mode
def main(argv=None) -> int:
    import pytest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="where pytest-benchmark writes its JSON (default: a temporary file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.json or str(Path(tmp) / "bench.json")
        status = pytest.main([__file__, "-o", "addopts=", "--benchmark-only", f"--benchmark-json={path}", "-s",
                              "-p", "no:cacheprovider", "-q"])
        if status != 0:
            return int(status)
        info = json.loads(Path(path).read_text())["benchmarks"][0]["extra_info"]
    print(info["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
