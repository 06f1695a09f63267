"""GPU timing of one first-order DARTS search step: reference cells, fused cells, fused cells + CUDA graph.

Run by benchmarks/gpu_check.sh on a machine with a GPU:
    python benchmarks/gpu_bench.py --out DIR [--steps 10] [--shapes cifar imagenet]
Writes DIR/search_step.json and DIR/search_step.md (device name, seconds per step, speedups, peak memory =
torch.cuda.max_memory_allocated during one step, minus what was allocated before it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from proxynas_fast.darts.graphed_step import CudaGraphSearchStep, SearchStep
from proxynas_fast.darts.model_search import Network
from proxynas_fast.darts.model_search_imagenet import PCNetworkImageNetSearch

SHAPES = {
    "cifar": dict(make=lambda: Network(C=16, num_classes=10, layers=8), batch=64, size=32, classes=10),
    "imagenet": dict(make=lambda: PCNetworkImageNetSearch(C=16, num_classes=1000, layers=8), batch=64, size=224,
                     classes=1000),
}


def build(shape, backend, device):
    spec = SHAPES[shape]
    torch.manual_seed(0)
    model = spec["make"]().to(device)
    model.backend = backend
    w_opt = torch.optim.SGD(model.weights_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                             capturable=True)
    n, s, c = spec["batch"], spec["size"], spec["classes"]
    batch = [torch.randn(n, 3, s, s, device=device), torch.randint(0, c, (n,), device=device),
             torch.randn(n, 3, s, s, device=device), torch.randint(0, c, (n,), device=device)]
    return model, w_opt, a_opt, batch


def measure(shape, variant, steps, device):
    backend = "reference" if variant == "reference" else "fused"
    model, w_opt, a_opt, batch = build(shape, backend, device)
    if variant == "fused+graph":
        step = CudaGraphSearchStep(model, w_opt, a_opt, example_batch=batch)
    else:
        step = SearchStep(model, w_opt, a_opt)
        for _ in range(2):
            step(*batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(*batch)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    start = time.perf_counter()
    for _ in range(steps):
        losses = step(*batch)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    ok = all(bool(torch.isfinite(t).all()) for t in losses if t is not None)
    del model, step
    torch.cuda.empty_cache()
    return dict(shape=shape, variant=variant, batch=SHAPES[shape]["batch"], seconds_per_step=seconds,
                peak_bytes=peak, finite_losses=ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py needs a CUDA device")
    device = torch.device("cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        for variant in ("reference", "fused", "fused+graph"):
            try:
                row = measure(shape, variant, args.steps, device)
            except Exception as e:  # noqa: BLE001 - record the failure, keep measuring the rest
                row = dict(shape=shape, variant=variant, error=f"{type(e).__name__}: {e}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    ref = {r["shape"]: r for r in rows if r["variant"] == "reference" and "seconds_per_step" in r}
    for r in rows:
        if "seconds_per_step" in r and r["shape"] in ref:
            r["speedup_vs_reference"] = ref[r["shape"]]["seconds_per_step"] / r["seconds_per_step"]
            r["memory_vs_reference"] = r["peak_bytes"] / max(ref[r["shape"]]["peak_bytes"], 1)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                  steps=args.steps, rows=rows)
    (args.out / "search_step.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Search step on {result['device']} (torch {result['torch']}, {result['date']})", "",
             "| shape | batch | variant | s/step | speedup | peak MiB | memory ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | | {r['variant']} | error: {r['error'][:80]} | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['batch']} | {r['variant']} | {r['seconds_per_step']:.4f} | "
                     f"{r.get('speedup_vs_reference', float('nan')):.2f}x | {r['peak_bytes'] / 2**20:.0f} | "
                     f"{r.get('memory_vs_reference', float('nan')):.2f}x |")
    (args.out / "search_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
