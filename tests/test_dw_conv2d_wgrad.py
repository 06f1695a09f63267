"""The CPU depthwise-convolution backward (csrc/ops/cpu/dw_conv2d_kernel.cpp) on what the per-op tests of
test_ops.py / test_fused_kernels.py do not reach: the weight gradient keeps per-tap vector partial sums across
rows and samples and adds them into double every so many rows, reads the output-gradient rows in place with the
last vector of each row masked (the planes at the very end of the tensor are copied), and the input gradient
computes only the interior rows of the padded plane (per phase plane for larger strides) in blocks of rows,
storing a row's partial last vector whole where its extra lanes fall on later rows. So: batch sizes 1, 3 and 33 and
plane widths below, at and above a vector (and rows long enough to be cut into chunks) against the float64
reference; a NaN in one output-gradient plane stays out of the other planes' gradients; and the result is
bitwise the same for 1 and 2 threads."""
from __future__ import annotations

import pytest
import torch

from proxynas_fast import extension
from proxynas_fast.ops.dw_conv2d import dw_conv2d_reference

pytestmark = pytest.mark.skipif(not extension.has_cpu_kernels(), reason="the extension is not built")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
# (C, H, W, M, kernel, stride, padding, dilation): W 7 (one masked vector per row), 8 and 16 (whole vectors),
# 13 and 28 (whole vectors plus a masked tail), 300 (long rows, cut into chunks); strided and 1x1 kernels (strides
# 2 and 3; phases without taps, and a phase without input rows: H = 1 with stride 2 and padding 1).
CASES = [(4, 7, 7, 4, 5, 1, 4, 2), (3, 8, 8, 2, 3, 1, 1, 1), (2, 14, 13, 3, 7, 1, 3, 1), (2, 28, 28, 2, 3, 1, 1, 1),
         (2, 16, 16, 1, 5, 1, 2, 1), (1, 5, 300, 2, 3, 1, 1, 1), (3, 9, 10, 3, 5, 2, 4, 2), (2, 11, 11, 2, 1, 2, 0, 1),
         (2, 6, 6, 1, 7, 1, 9, 3), (2, 14, 14, 2, 5, 2, 4, 2), (2, 14, 14, 3, 3, 2, 1, 1), (1, 9, 300, 2, 3, 2, 1, 1),
         (2, 13, 17, 2, 5, 3, 2, 2), (2, 1, 9, 1, 3, 2, 1, 1), (2, 28, 28, 1, 3, 2, 1, 1),
         (2, 9, 5, 2, 3, 2, 1, 1), (2, 9, 3, 2, 3, 1, 1, 1)]


def _backward(g, x, w, s, p, d):
    return torch.ops.proxynas_fast.dw_conv2d_backward(g, x, w, [s, s], [p, p], [d, d], [True, True])


def _reference(g, x, w, s, p, d):
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    dw_conv2d_reference(x64, w64, s, p, d).backward(g.double())
    return x64.grad, w64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", [1, 3, 33])
def test_backward_matches_float64_reference(n, case, dtype):
    C, H, W, M, k, s, p, d = case
    gen = torch.Generator().manual_seed(n * 100 + k)
    x = torch.randn(n, C, H, W, generator=gen, dtype=dtype)
    w = torch.randn(M * C, 1, k, k, generator=gen, dtype=dtype)
    g = torch.randn(dw_conv2d_reference(x, w, s, p, d).shape, generator=gen, dtype=dtype)
    gx, gw = _backward(g, x, w, s, p, d)
    rx, rw = _reference(g, x, w, s, p, d)
    # the weight gradient sums n * Ho * Wo products: compare relative to its scale
    torch.testing.assert_close(gw.double() / rw.abs().max(), rw / rw.abs().max(), **TOL[dtype])
    torch.testing.assert_close(gx.double(), rx, **TOL[dtype])


@pytest.mark.parametrize("case", [(4, 7, 7, 4, 5, 1, 4, 2), (2, 14, 13, 3, 7, 1, 3, 1), (3, 9, 10, 3, 5, 2, 4, 2)])
def test_nan_in_one_plane_stays_there(case):
    """Row tails are read past the end of the row (into the next plane) and masked: a NaN there must not leak."""
    C, H, W, M, k, s, p, d = case
    x = torch.randn(2, C, H, W)
    w = torch.randn(M * C, 1, k, k)
    g = torch.randn(dw_conv2d_reference(x, w, s, p, d).shape)
    g[0, 1] = float("nan")  # kernel 0 of input channel 1 (output channel o = m * C + c)
    gx, gw = _backward(g, x, w, s, p, d)
    bad_w = torch.zeros(M * C, dtype=torch.bool)
    bad_w[1] = True
    assert gw[bad_w].isnan().all() and gw[~bad_w].isfinite().all()
    others = [c for c in range(C) if c != 1]
    assert gx[0, 1].isnan().any() and gx[0, others].isfinite().all() and gx[1].isfinite().all()


def test_same_result_for_one_and_two_threads():
    """One thread owns a channel and runs over the batch in a fixed order: no dependence on the thread count."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(33, 8, 14, 14, generator=gen)
    w = torch.randn(16, 1, 5, 5, generator=gen)
    g = torch.randn(33, 16, 14, 14, generator=gen)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_backward(g, x, w, 1, 4, 2))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
