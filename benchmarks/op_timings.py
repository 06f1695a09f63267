"""Per-op CPU timings of the fused-cell kernels against the PyTorch ops they replace (1 intra-op thread, best of
7 after a warm-up call; backward timed on a retained graph). Prints the markdown table of docs/PERFORMANCE.md.

Run: `python benchmarks/op_timings.py`. The speed goals themselves are checked by bench_search_step.py."""
import time

import torch

import proxynas_fast.ops as ops

BATCH = 64
REPEATS = 7

# (channels, plane size, kernel, dilation, stride, channel multiplier, label)
DW_CASES = [
    (16, 32, 3, 1, 1, 1, "3x3, dil 1"),
    (16, 32, 5, 2, 1, 1, "5x5, dil 2"),
    (16, 32, 3, 1, 1, 4, "3x3, dil 1, multiplier 4"),
    (64, 8, 5, 2, 1, 4, "8x8 planes, C=64, 5x5 dil 2, multiplier 4"),
    (32, 32, 5, 1, 2, 2, "stride 2, 5x5, multiplier 2"),
]
# (groups E, channels C, plane size, batch, label): the fused cell's grouped 1x1 convolutions [E, C, C]
PW_CASES = [
    (2, 16, 32, 64, "E=2, C=16, 32x32 (CIFAR cell 0-1)"),
    (3, 64, 8, 64, "E=3, C=64, 8x8 (CIFAR cells 6-7)"),
    (4, 8, 28, 32, "E=4, C=8, 28x28, N=32 (ImageNet, PC-DARTS k=2)"),
    (4, 32, 7, 32, "E=4, C=32, 7x7, N=32 (ImageNet)"),
]
# (max or average, stride, label); 3x3 windows, padding 1, C=16, 32x32
POOL_CASES = [
    (True, 1, "max 3x3, stride 1"),
    (False, 1, "avg 3x3, stride 1"),
    (True, 2, "max 3x3, stride 2"),
    (False, 2, "avg 3x3, stride 2"),
]


def best_ms(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def forward_backward_ms(op, inputs, *args):
    """(forward ms, backward ms) of op(*inputs, *args); the backward w.r.t. all inputs."""
    forward = best_ms(lambda: op(*inputs, *args))
    out = op(*inputs, *args)
    grad = torch.randn_like(out)
    backward = best_ms(lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True))
    return forward, backward


def row(label, reference, fused):
    return f"| {label} | {reference[0]:.1f} / {reference[1]:.1f} | {fused[0]:.1f} / {fused[1]:.1f} |"


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for channels, size, kernel, dilation, stride, multiplier, label in DW_CASES:
        x = torch.randn(BATCH, channels, size, size, requires_grad=True)
        w = torch.randn(multiplier * channels, 1, kernel, kernel, requires_grad=True)
        padding = dilation * (kernel - 1) // 2
        args = (stride, padding, dilation)
        rows.append(row(f"dw conv: {label}", forward_backward_ms(ops.dw_conv2d_reference, (x, w), *args),
                        forward_backward_ms(ops.dw_conv2d, (x, w), *args)))
    for is_max, stride, label in POOL_CASES:
        x = torch.randn(BATCH, 16, 32, 32, requires_grad=True)
        args = (is_max, 3, stride, 1)
        rows.append(row(f"pool: {label}", forward_backward_ms(ops.pool2d_reference, (x,), *args),
                        forward_backward_ms(ops.pool2d, (x,), *args)))
    for groups, channels, size, batch, label in PW_CASES:
        x = torch.randn(batch, groups * channels, size, size, requires_grad=True)
        w = torch.randn(groups, channels, channels, requires_grad=True)
        rows.append(row(f"pointwise (matmul vs pw_conv2d): {label}",
                        forward_backward_ms(ops.pw_conv2d_reference, (x, w)),
                        forward_backward_ms(ops.pw_conv2d, (x, w))))
    print("| case (N=64, C=16, 32x32 unless stated) | PyTorch fwd / bwd (ms) | proxynas_fast fwd / bwd (ms) |")
    print("| --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
