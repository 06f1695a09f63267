"""Seconds per `cpu-demo` search step (C=8, 5 cells, batch 32, first-order DARTS, default backend) under the
thread settings this process was started with; compare thread counts and OpenMP wait policies by running it in
separate processes, interleaved (the settings are read once, when torch loads):

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE python benchmarks/search_step_threads.py 6
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/search_step_threads.py 6

Prints the thread count, the policy, median / min / max seconds per step and the 1-minute load average.
Results: docs/PERFORMANCE.md, "Threads on a busy machine".
"""
import os
import sys
import time

import torch

from proxynas_fast.darts.graphed_step import SearchStep
from proxynas_fast.darts.model_search import Network


def main(steps: int) -> None:
    torch.manual_seed(0)
    model = Network(C=8, num_classes=10, layers=5)
    weights = torch.optim.SGD(model.weights_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    arch = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    step = SearchStep(model, weights, arch)
    g = torch.Generator().manual_seed(1)
    batch = [torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g),
             torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)]
    step(*batch)  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(*batch)
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"threads={torch.get_num_threads()} policy={os.environ.get('OMP_WAIT_POLICY', 'default')} "
          f"median={times[len(times) // 2]:.3f} min={times[0]:.3f} max={times[-1]:.3f} "
          f"load={os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
