"""The CPU depthwise-convolution forward (csrc/ops/cpu/dw_conv2d_kernel.cpp) on what the per-op tests of
test_ops.py / test_fused_kernels.py do not reach: at stride 1 the output is computed row by row over the padded
input plane (blocks of up to 8 rows and 4 vectors, reading past the last row and column into a zeroed slack),
where that needs no more vectors than the flat grid; other planes keep the flat phase grid. So: plane widths
below, at and above a vector and long rows cut into column chunks, heights that leave partial row blocks, batch
sizes 1, 3 and 33, multipliers 1 and 3, strided and dilated windows, float32 and float64, against the float64
reference; and the result is bitwise the same for 1 and 2 threads."""
from __future__ import annotations

import pytest
import torch

from proxynas_fast import extension
from proxynas_fast.ops.dw_conv2d import dw_conv2d_reference

pytestmark = pytest.mark.skipif(not extension.has_cpu_kernels(), reason="the extension is not built")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
# (C, H, W, kernel, stride, padding, dilation): W 7 (one partial vector per row), 8 and 16 (whole vectors),
# 13 and 28 (whole vectors plus a partial one), 3 and 5 (a row's last vector reaches two rows on), 300 (rows
# cut into chunks of 4 vectors); heights 1 to 33 leave row blocks of 1, 2, 4 and 8 rows and partial ones; no
# padding, large padding, strides 2 and 3, dilations 2, 3.
CASES = [(4, 7, 7, 5, 1, 4, 2), (3, 7, 7, 3, 1, 1, 1), (3, 8, 8, 3, 1, 1, 1), (2, 14, 13, 7, 1, 3, 1),
         (2, 28, 28, 3, 1, 1, 1), (2, 28, 28, 5, 1, 4, 2), (2, 16, 16, 5, 1, 2, 1), (1, 5, 300, 3, 1, 1, 1),
         (1, 5, 300, 5, 1, 0, 1), (2, 33, 9, 3, 1, 0, 1), (2, 1, 20, 1, 1, 0, 1), (2, 2, 17, 3, 1, 1, 1),
         (3, 9, 10, 5, 2, 4, 2), (2, 11, 11, 1, 2, 0, 1), (2, 6, 6, 7, 1, 9, 3), (2, 13, 16, 3, 3, 2, 2),
         (2, 32, 32, 3, 1, 1, 1), (2, 32, 32, 5, 1, 4, 2), (2, 6, 3, 1, 1, 0, 1), (2, 9, 5, 3, 1, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", [1, 3, 33])
def test_forward_matches_float64_reference(n, case, M, dtype):
    C, H, W, k, s, p, d = case
    gen = torch.Generator().manual_seed(n * 100 + k * 10 + M)
    x = torch.randn(n, C, H, W, generator=gen, dtype=dtype)
    w = torch.randn(M * C, 1, k, k, generator=gen, dtype=dtype)
    y = torch.ops.proxynas_fast.dw_conv2d(x, w, [s, s], [p, p], [d, d])
    ref = dw_conv2d_reference(x.double(), w.double(), s, p, d)
    assert y.dtype == dtype and y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, **TOL[dtype])


def test_forward_rectangular_window():
    """Different strides, paddings and dilations per axis (stride (1, 1) with a 3x5 window, and (1, 2))."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 12, 19, generator=gen)
    w = torch.randn(8, 1, 3, 5, generator=gen)
    for s, p, d in (([1, 1], [1, 4], [1, 2]), ([1, 2], [0, 2], [2, 1])):
        y = torch.ops.proxynas_fast.dw_conv2d(x, w, s, p, d)
        ref = dw_conv2d_reference(x.double(), w.double(), s, p, d)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_forward_nan_stays_in_its_plane():
    """Row blocks read past the last column and row of the padded plane: a NaN must not reach other planes."""
    x = torch.randn(2, 3, 7, 7)
    w = torch.randn(6, 1, 5, 5)
    x[0, 1, 6, 6] = float("nan")
    y = torch.ops.proxynas_fast.dw_conv2d(x, w, [1, 1], [4, 4], [2, 2])
    bad = torch.zeros(2, 6, dtype=torch.bool)
    bad[0, 1] = bad[0, 4] = True  # output channels m * C + c of input channel 1 of sample 0
    assert y[bad].isnan().any(dim=(1, 2)).all() and y[~bad].isfinite().all()


@pytest.mark.parametrize("case", [(8, 14, 14, 5, 1, 4, 2), (8, 7, 7, 3, 1, 1, 1), (4, 28, 28, 3, 2, 1, 1)])
def test_forward_same_result_for_one_and_two_threads(case):
    C, H, W, k, s, p, d = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(33, C, H, W, generator=gen)
    w = torch.randn(2 * C, 1, k, k, generator=gen)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.ops.proxynas_fast.dw_conv2d(x, w, [s, s], [p, p], [d, d]))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0], results[1])
