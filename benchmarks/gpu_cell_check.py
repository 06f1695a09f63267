"""Fused vs reference search network, one forward + backward in float32 on one device (run by gpu_check.sh).

    python benchmarks/gpu_cell_check.py [--device cuda] [--channels 8 --layers 5 --batch 8]

TF32 is switched off first: by default cuDNN runs the reference's 1x1 convolutions in TF32 (10-bit mantissa)
while the fused cell's batched `matmul` runs in full float32, and the two would differ by ~1e-3 for that reason
alone. Prints the largest differences and exits 1 when they exceed the tolerances.
"""
from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

from proxynas_fast.darts.model_search import Network


def full_float32() -> None:
    """No TF32 anywhere: cuDNN convolutions and cuBLAS matmuls in full float32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_cell_check: --device cuda but no CUDA device is available")
    full_float32()
    torch.manual_seed(0)
    ref = Network(C=args.channels, num_classes=10, layers=args.layers, backend="reference").to(device)
    fus = copy.deepcopy(ref)
    fus.backend = "fused"
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    logits = {}
    for name, m in (("reference", ref), ("fused", fus)):
        logits[name] = m(x)
        F.cross_entropy(logits[name], y).backward()
    diff_out = (logits["reference"] - logits["fused"]).abs().max().item()
    diff_alpha = max((a.grad - b.grad).abs().max().item() for a, b in zip(ref.arch_parameters(),
                                                                          fus.arch_parameters()))
    diff_w = max((a.grad - b.grad).abs().max().item() for a, b in zip(ref.parameters(), fus.parameters()))
    print(f"{device}: max |logits diff| {diff_out:.2e}, |alpha grad diff| {diff_alpha:.2e}, "
          f"|weight grad diff| {diff_w:.2e}")
    if not (diff_out < 1e-3 and diff_alpha < 1e-3 and diff_w < 1e-2):
        print("fused cell does NOT match the reference")
        return 1
    print(f"fused cell on {device} matches the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
