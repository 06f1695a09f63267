"""GPU timing of one first-order DARTS search step: reference cells, fused cells, fused cells + CUDA graph.

Run by benchmarks/gpu_check.sh on a machine with a GPU:
    python benchmarks/gpu_bench.py --out DIR [--steps 10] [--shapes cifar imagenet] [--device cuda] [--toy]
Writes DIR/search_step.json and DIR/search_step.md (device name, seconds per step, speedups, peak memory).

Peak memory = torch.cuda.max_memory_allocated over the measured window, minus what was allocated when it began.
Every variant first takes two eager steps (gradients and optimiser state exist from then on); the window then
covers one step, and for the CUDA-graph variant also its construction: the warm-up steps and the capture, whose
private memory pool the graph keeps and reuses at every replay. (Measured after the capture, that pool was
already allocated and the peak read about 0.) `--device cpu --toy` runs every variant it can at toy sizes
(the CUDA graph needs CUDA; no peak memory on CPU): the dry run of gpu_check.sh.
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
    "cifar": dict(make=lambda C, layers: Network(C=C, num_classes=10, layers=layers), batch=64, size=32, classes=10),
    "imagenet": dict(make=lambda C, layers: PCNetworkImageNetSearch(C=C, num_classes=1000, layers=layers), batch=64,
                     size=224, classes=1000),
}
FULL = dict(C=16, layers=8)
TOY = dict(C=4, layers=3, batch=2, size={"cifar": 8, "imagenet": 32})


def build(shape, backend, device, toy=False):
    spec = SHAPES[shape]
    dims = TOY if toy else FULL
    torch.manual_seed(0)
    model = spec["make"](dims["C"], dims["layers"]).to(device)
    model.backend = backend
    w_opt = torch.optim.SGD(model.weights_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                             capturable=device.type == "cuda")
    n = TOY["batch"] if toy else spec["batch"]
    s = TOY["size"][shape] if toy else spec["size"]
    c = spec["classes"]
    batch = [torch.randn(n, 3, s, s, device=device), torch.randint(0, c, (n,), device=device),
             torch.randn(n, 3, s, s, device=device), torch.randint(0, c, (n,), device=device)]
    return model, w_opt, a_opt, batch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(shape, variant, steps, device, toy=False):
    backend = "reference" if variant == "reference" else "fused"
    model, w_opt, a_opt, batch = build(shape, backend, device, toy)
    step = SearchStep(model, w_opt, a_opt)
    for _ in range(1 if toy else 2):
        step(*batch)
    _sync(device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    if variant == "fused+graph":  # inside the window: the capture allocates the graph's memory pool
        step = CudaGraphSearchStep(model, w_opt, a_opt, example_batch=batch)
    step(*batch)
    _sync(device)
    peak = torch.cuda.max_memory_allocated() - base if on_cuda else None
    start = time.perf_counter()
    for _ in range(steps):
        losses = step(*batch)
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    ok = all(bool(torch.isfinite(t).all()) for t in losses if t is not None)
    del model, step
    if on_cuda:
        torch.cuda.empty_cache()
    return dict(shape=shape, variant=variant, batch=int(batch[0].shape[0]), seconds_per_step=seconds,
                peak_bytes=peak, finite_losses=ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for the dry run")
    ap.add_argument("--toy", action="store_true", help="toy network and batch sizes (dry run)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py: --device cuda but no CUDA device is available")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in args.shapes:
        for variant in ("reference", "fused", "fused+graph"):
            if variant == "fused+graph" and device.type != "cuda":
                rows.append(dict(shape=shape, variant=variant, error="skipped: CUDA graphs need a CUDA device"))
                continue
            try:
                row = measure(shape, variant, args.steps, device, args.toy)
            except Exception as e:  # noqa: BLE001 - record the failure, keep measuring the rest
                row = dict(shape=shape, variant=variant, error=f"{type(e).__name__}: {e}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    ref = {r["shape"]: r for r in rows if r["variant"] == "reference" and "seconds_per_step" in r}
    for r in rows:
        if "seconds_per_step" in r and r["shape"] in ref:
            r["speedup_vs_reference"] = ref[r["shape"]]["seconds_per_step"] / r["seconds_per_step"]
            if r["peak_bytes"] is not None:
                r["memory_vs_reference"] = r["peak_bytes"] / max(ref[r["shape"]]["peak_bytes"], 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result = dict(device=name, torch=torch.__version__, date=time.strftime("%Y-%m-%d"), steps=args.steps,
                  toy=args.toy, rows=rows)
    (args.out / "search_step.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Search step on {result['device']} (torch {result['torch']}, {result['date']})", "",
             "| shape | batch | variant | s/step | speedup | peak MiB | memory ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | | {r['variant']} | error: {r['error'][:80]} | | | |")
            continue
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        ratio = f"{r['memory_vs_reference']:.2f}x" if "memory_vs_reference" in r else "n/a"
        lines.append(f"| {r['shape']} | {r['batch']} | {r['variant']} | {r['seconds_per_step']:.4f} | "
                     f"{r.get('speedup_vs_reference', float('nan')):.2f}x | {peak} | {ratio} |")
    (args.out / "search_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [r for r in rows if "error" in r and not r["error"].startswith("skipped")]
    failed += [r for r in rows if r.get("finite_losses") is False]
    if failed:
        raise SystemExit(f"gpu_bench.py: {len(failed)} variant(s) failed or gave non-finite losses: "
                         + "; ".join(f"{r['shape']}/{r['variant']}" for r in failed))


if __name__ == "__main__":
    main()
