"""One search epoch on CPU: the paper's own search loop against `proxynas_fast.search`, on the same proxy.

Run (the real measurement, a full epoch of each arm; the paper's loop takes ~20 min on a busy 2-core machine):

    OMP_NUM_THREADS=2 .venv/bin/python -m pytest benchmarks/bench_search_epoch.py \
        -o addopts="" --benchmark-only -s --benchmark-json benchmarks/results/cpu_search_epoch_DATE.json

(The runtime's default OpenMP wait policy, what the CLIs leave when the threads fit the free cores. The runs of the
morning of 2026-12-02 set OMP_WAIT_POLICY=PASSIVE, which slows both arms 1.6-3x on a quiet machine, the paper's
loop of many small ops more: docs/PERFORMANCE.md.)

Quick check of the code (2 training steps and 2 validation batches per arm, a few minutes on a quiet machine):
PROXYNAS_BENCH_EPOCH_STEPS=2 OMP_NUM_THREADS=1 and the same command.

The proxy: p1 selection (portion 0.1, seed 0) of the CIFAR-10 JPEGs by the ResNet-20 entropies, split into its
weight and architecture halves by `split_proxy` (seed 0), as `proxynas_fast.search` does; the test checks that the
pipeline selected exactly these indices.

Arms, one after the other in one session (`test_search_epoch[paper]`, then `[proxynas_fast]`):
  paper          `paper_search_loop.run_paper_epoch`: the DARTS first-order script's behaviour (JPEG Dataset and
                 DataLoader with workers, the reference network, its train loop and validation pass);
  proxynas_fast  `run_search(resolve_config({...}))`, fused backend, resident loader, epochs=1, into a tmp folder.
Each arm records its phases (seconds): `epoch` = the training steps + the validation pass (what both loops repeat
every epoch), `total` = the whole call (for proxynas_fast also loading the decoded data set from the cache,
selecting, building the model and writing the checkpoint and the outputs), `cpu` = the CPU time of the whole call
(this process and its finished children, the DataLoader workers: less sensitive to other jobs on the machine than
wall time). `test_search_epoch_ratio` prints and records the three ratios, the thread count and the load average
before and after each arm, and checks the goal (epoch ratio >= 4x; with PROXYNAS_BENCH_EPOCH_STEPS, on the capped,
partial epoch).

Environment: PROXYNAS_SHARED (default ../shared), PROXYNAS_BENCH_EPOCH_PORTION (0.1),
PROXYNAS_BENCH_EPOCH_STEPS (cap on the training steps and the validation batches of both arms, for a quick run;
default: the full epoch), PROXYNAS_BENCH_EPOCH_WORKERS (DataLoader workers of the paper's loop, default 2 as the
script), PROXYNAS_BENCH_EPOCH_ROUNDS (rounds per arm, default 1). The decoded-image cache of the package is filled
before timing (a search decodes the 50,000 JPEGs once per machine, not once per epoch).
"""
from __future__ import annotations

import itertools
import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

from paper_search_loop import PaperSetting, run_paper_epoch
from proxynas_fast.data import load_dataset
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.search import pipeline, resolve_config, run_search
from proxynas_fast.selection import select, split_proxy

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PROXYNAS_SHARED", REPO_ROOT.parent / "shared"))
JPEG_DIR = SHARED / "data" / "cifar10-jpeg"
ENTROPY_FILE = SHARED / "reference" / "entropy" / "cifar10_resnet20_index_entropy_class.txt"
PORTION = float(os.environ.get("PROXYNAS_BENCH_EPOCH_PORTION", "0.1"))
STEPS = int(os.environ["PROXYNAS_BENCH_EPOCH_STEPS"]) if os.environ.get("PROXYNAS_BENCH_EPOCH_STEPS") else None
WORKERS = int(os.environ.get("PROXYNAS_BENCH_EPOCH_WORKERS", "2"))
ROUNDS = int(os.environ.get("PROXYNAS_BENCH_EPOCH_ROUNDS", "1"))
SEED = 0
EPOCH_GOAL = 4.0
ARMS = ("paper", "proxynas_fast")
_results: dict = {}


@dataclass
class Proxy:
    selected: np.ndarray  # data-set indices, sorted
    weights: np.ndarray
    arch: np.ndarray


def select_proxy() -> Proxy:
    """p1 on the entropy file, then the 50/50 split, as proxynas_fast.search selects with these settings."""
    table = read_entropy_file(ENTROPY_FILE).sorted_by_index()
    positions = select("p1", table.entropy, portion=PORTION, labels=table.label, seed=SEED, dataset="cifar10")
    selected = table.index[positions]
    weights, arch = split_proxy(selected, 0.5, SEED)
    return Proxy(selected, weights, arch)


@pytest.fixture(scope="module")
def proxy() -> Proxy:
    if not JPEG_DIR.is_dir() or not ENTROPY_FILE.is_file():
        pytest.fail(f"missing {JPEG_DIR} or {ENTROPY_FILE} (set PROXYNAS_SHARED)")
    load_dataset("cifar10", JPEG_DIR, "train", download=False)  # fills the decoded-image cache once, untimed
    return select_proxy()


class CappedLoader:
    """A loader that yields at most `limit` batches per epoch (quick runs); everything else is the loader's."""

    def __init__(self, loader, limit: int):
        self.loader, self.limit = loader, limit

    def __len__(self) -> int:
        return min(len(self.loader), self.limit)

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.limit)

    def __getattr__(self, name):
        return getattr(self.loader, name)


@contextmanager
def capped_loaders(limit: Optional[int]):
    """While active, the search pipeline's loaders stop after `limit` batches (None: unchanged)."""
    original = pipeline.build_loaders
    if limit is not None:
        pipeline.build_loaders = lambda *a, **k: {key: CappedLoader(loader, limit)
                                                  for key, loader in original(*a, **k).items()}
    try:
        yield
    finally:
        pipeline.build_loaders = original


def search_config(out_dir: Path):
    return resolve_config(dict(dataset="cifar10", out=str(out_dir), data_dir=str(JPEG_DIR), download=False,
                               entropy_file=str(ENTROPY_FILE), selection="p1", portion=PORTION, seed=SEED,
                               epochs=1, backend="fused", device="cpu", progress=False))


def run_fused_epoch(proxy: Proxy, out_dir: Path) -> dict:
    """One epoch of the real pipeline; its phases in seconds (the pipeline times training and validation)."""
    t0 = time.perf_counter()
    with capped_loaders(STEPS):
        result = run_search(search_config(out_dir))
    total = time.perf_counter() - t0
    for part in ("selected", "weights", "arch"):
        assert np.array_equal(getattr(result.split, part), getattr(proxy, part)), f"proxy {part} differs"
    record = result.history[0]
    train, val = record["train_seconds"], record["val_seconds"]
    return dict(seconds=dict(train=train, val=val, epoch=train + val, other=total - train - val, total=total),
                steps=len(result.loaders["weights"]), val_batches=len(result.loaders["eval"]),
                val_acc=record["val_acc"], backend="fused", loaders=type(result.loaders["weights"]).__name__)


def run_paper(proxy: Proxy, out_dir: Path) -> dict:
    setting = PaperSetting(workers=WORKERS, seed=SEED)
    r = run_paper_epoch(JPEG_DIR, proxy.weights, proxy.arch, out_dir, setting, steps=STEPS)
    return dict(seconds=r.seconds, steps=r.steps, val_batches=r.val_batches, val_acc=r.val_top1,
                workers=setting.workers, pin_memory=torch.cuda.is_available(), model="tests/reference_darts_modules")


RUNNERS = {"paper": run_paper, "proxynas_fast": run_fused_epoch}


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.mark.benchmark(group="search_epoch_cifar")
@pytest.mark.parametrize("arm", ARMS)
def test_search_epoch(benchmark, arm, proxy, tmp_path_factory):
    rounds = []

    def fresh_folder():
        return (proxy, tmp_path_factory.mktemp(f"epoch-{arm}")), {}

    def one_epoch(p, out_dir):
        start = cpu_seconds()
        rounds.append(RUNNERS[arm](p, out_dir))
        rounds[-1]["seconds"]["cpu"] = cpu_seconds() - start

    load_before = os.getloadavg()
    benchmark.pedantic(one_epoch, setup=fresh_folder, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    load_after = os.getloadavg()
    median = {k: float(np.median([r["seconds"][k] for r in rounds])) for k in ("epoch", "total", "cpu")}
    info = dict(rounds[-1], arm=arm, median=median, threads=torch.get_num_threads(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), load_before=load_before, load_after=load_after,
                portion=PORTION, steps_cap=STEPS,
                proxy=dict(selected=len(proxy.selected), weights=len(proxy.weights), arch=len(proxy.arch)))
    benchmark.extra_info.update(info)
    _results[arm] = info
    print(f"\n{arm}: epoch {median['epoch']:.1f}s, total {median['total']:.1f}s ({median['cpu']:.1f} CPU-s), phases "
          f"{ {k: round(v, 2) for k, v in rounds[-1]['seconds'].items()} }, {info['steps']} steps, "
          f"{info['val_batches']} validation batches, {info['threads']} threads, load {load_before} -> {load_after}")


def epoch_ratios() -> dict:
    paper, fused = _results["paper"]["median"], _results["proxynas_fast"]["median"]
    return {k: paper[k] / fused[k] for k in ("epoch", "total", "cpu")}


@pytest.mark.benchmark(group="search_epoch_cifar")
def test_search_epoch_ratio(benchmark):
    if any(arm not in _results for arm in ARMS):
        pytest.skip("run together with both arms of test_search_epoch")
    ratio = epoch_ratios()
    loads = {arm: (_results[arm]["load_before"], _results[arm]["load_after"]) for arm in ARMS}
    benchmark.extra_info.update(epoch_ratio=ratio["epoch"], total_ratio=ratio["total"], cpu_ratio=ratio["cpu"],
                                loads=loads,
                                threads=torch.get_num_threads(), steps_cap=STEPS, goal=EPOCH_GOAL)
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\nsearch epoch on cpu ({torch.get_num_threads()} threads, portion {PORTION}, steps "
          f"{STEPS or 'full epoch'}): paper {_results['paper']['median']}, proxynas_fast "
          f"{_results['proxynas_fast']['median']} -> epoch {ratio['epoch']:.2f}x, end to end {ratio['total']:.2f}x, "
          f"CPU time end to end {ratio['cpu']:.2f}x; "
          f"load average before/after: {loads}")
    capped = f" (a partial epoch: {STEPS} steps and validation batches)" if STEPS else ""
    assert ratio["epoch"] >= EPOCH_GOAL, f"search epoch only {ratio['epoch']:.2f}x the paper's loop{capped}"
