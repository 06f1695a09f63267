"""Is the fused search step of this checkout slower than another's? Interleaved, one process per measurement.

    git worktree add /tmp/old <commit>  &&  cp proxynas_fast/_C*.so /tmp/old/proxynas_fast/   (same csrc/ only)
    python benchmarks/compare_step_versions.py --other /tmp/old --shape imagenet --batch 32 --pairs 3

Two versions of one package cannot share a process, so each measurement is a child process that imports the
package from its checkout, builds the network of `bench_search_step.build(shape, backend)` (that checkout's own
benchmark file), takes one warm-up step and times `--steps` steps. Children alternate this/other, so machine load
drifts hit both alike; the report gives each side's per-step median and the ratio, the threads and the load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
root = sys.argv[1]
sys.path[:0] = [root, os.path.join(root, "benchmarks")]
os.environ["PROXYNAS_BENCH_CIFAR_BATCH"] = os.environ["PROXYNAS_BENCH_IMAGENET_BATCH"] = sys.argv[3]
import torch
import bench_search_step as b
import proxynas_fast
assert os.path.dirname(proxynas_fast.__file__).startswith(root), proxynas_fast.__file__
model, step, batch = b.build(sys.argv[2], sys.argv[5])
step(*batch)
times = []
for _ in range(int(sys.argv[4])):
    t = time.perf_counter(); step(*batch); times.append(time.perf_counter() - t)
print(json.dumps({"times": times, "threads": torch.get_num_threads()}))
"""


def measure(root: Path, args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), args.shape, str(args.batch), str(args.steps),
                          args.backend], check=True, capture_output=True, text=True, cwd=str(root))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", required=True, type=Path, help="the other checkout (its extension built or copied)")
    p.add_argument("--shape", choices=("cifar", "imagenet"), default="imagenet")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per child")
    p.add_argument("--pairs", type=int, default=3, help="this/other child pairs, alternated")
    p.add_argument("--backend", default="fused")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    sides = {"this": [], "other": []}
    threads = None
    for i in range(args.pairs):
        order = (("this", HERE), ("other", args.other.resolve()))
        for name, root in (order if i % 2 == 0 else order[::-1]):
            result = measure(root, args)
            sides[name] += result["times"]
            threads = result["threads"]
            print(f"pair {i}: {name:5s} {' '.join(f'{t:.2f}' for t in result['times'])} s", flush=True)
    med = {k: statistics.median(v) for k, v in sides.items()}
    print(f"{args.shape} batch {args.batch}, {args.backend}, {threads} threads, load {load_before[0]:.2f} -> "
          f"{os.getloadavg()[0]:.2f}: this {med['this']:.2f} s/step (min {min(sides['this']):.2f}), other "
          f"{med['other']:.2f} s/step (min {min(sides['other']):.2f}); this/other = {med['this'] / med['other']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
