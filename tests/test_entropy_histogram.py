"""entropy_histogram: compiled kernels against the float64 reference, edge cases and bad input."""
import math

import pytest
import torch

from devices import cpu_and_cuda, require_kernels
from proxynas_fast import extension
from proxynas_fast.ops import (entropy_histogram, entropy_histogram_reference, make_log10_edges,
                               softmax_entropy_f64)


@pytest.fixture(autouse=True)
def _kernels_for_the_device(request):
    """A CUDA case skips only without a CUDA device; with one but without the CUDA kernels it fails."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "device" in callspec.params:
        require_kernels(callspec.params["device"])


def _tricky_logits(n_classes: int, dtype=torch.float32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, n_classes, generator=g) * torch.logspace(-3, 1.5, 300).unsqueeze(1)
    x[0] = 0.0  # uniform row: entropy log(C)
    x[1] = -30.0
    x[1, 3] = 30.0  # one class dominates: entropy ~1e-24
    x[2] = 0.0
    x[2, 0] = 12.0  # dominant class, entropy ~1e-3
    x[3] = 1e4 * torch.randn(n_classes, generator=g)  # huge logits
    x[4] = 1e-6 * torch.randn(n_classes, generator=g)  # tiny logits: near-uniform
    x[5] = 5.0  # ties of the maximum
    x[5, : n_classes // 2] = -5.0
    x[6, :] = -200.0
    x[6, 1] = 0.0  # other classes underflow: entropy exactly 0
    return x.to(dtype)


@cpu_and_cuda
@pytest.mark.parametrize("n_classes", [10, 100, 1000, 1003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_float64_reference(device, n_classes, dtype):
    if not extension.has_kernels_for(device):
        pytest.fail(f"the compiled {device} kernel is missing ({extension.import_error()})")
    x = _tricky_logits(n_classes, dtype)
    edges = make_log10_edges(0.5, -12, 1.5)
    ent, bins, counts = entropy_histogram(x.to(device), edges)
    _, ref_bins, _ = entropy_histogram_reference(x.double(), edges)  # on the same rounded inputs
    ent, ref64 = ent.cpu().double(), softmax_entropy_f64(x.double())
    big = ref64 > 1e-30
    rel = ((ent[big] - ref64[big]).abs() / ref64[big]).max().item()
    assert rel < 2e-5, f"max relative entropy error {rel}"
    assert (ent[~big] < 1e-30).all()
    assert bins.dtype == torch.int64 and counts.dtype == torch.int64
    # bins agree except where log10(H) sits within float error of an edge
    diff = (bins.cpu() != ref_bins)
    if diff.any():
        v = torch.log10(ref64[diff])
        dist = (v.unsqueeze(1) - edges.unsqueeze(0)).abs().min(dim=1).values
        assert (dist < 1e-5).all(), f"bins differ away from edges: {v}"
    assert int(counts.sum()) == x.shape[0]
    assert torch.equal(counts.cpu(), torch.bincount(bins.cpu(), minlength=len(edges) - 1))


def test_float64_reference_against_exact_arithmetic():
    """The reference itself, checked row by row in arbitrary precision."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 1200  # enough digits that 1 + e^-1000 stays distinct from 1
    x = _tricky_logits(10).double()[:12]  # the hand-made extreme rows and a few random ones
    ours = softmax_entropy_f64(x)
    for row, h in zip(x.tolist(), ours.tolist()):
        z = [mpmath.mpf(v) for v in row]
        m = max(z)
        s = mpmath.fsum(mpmath.exp(v - m) for v in z)
        exact = -mpmath.fsum((mpmath.exp(v - m) / s) * ((v - m) - mpmath.log(s)) for v in z)
        if exact > mpmath.mpf("1e-300"):
            assert abs(h - float(exact)) <= 1e-12 * float(exact), (row, h, exact)


@cpu_and_cuda
def test_known_values_and_zero_entropy_bin(device):
    x = torch.zeros(3, 10)
    x[1, 2] = 200.0  # softmax is exactly one-hot in float32: entropy 0
    x[2] = torch.log(torch.tensor([0.5, 0.5] + [0.0] * 8) + 1e-30)
    edges = make_log10_edges(0.5, -3, 1)
    ent, bins, counts = entropy_histogram(x.to(device), edges)
    assert ent[0].item() == pytest.approx(math.log(10), rel=1e-6)
    assert ent[1].item() == 0.0
    assert bins[1].item() == 0, "entropy 0 (log10 = -inf) goes to the lowest bin"
    assert ent[2].item() == pytest.approx(math.log(2), rel=1e-5)
    # log10(log 10) = 0.362 lies in [0, 0.5): the bin whose left edge is 0
    assert edges[bins[0]].item() == 0.0


@cpu_and_cuda
def test_value_on_an_edge_goes_to_the_bin_above(device):
    # A two-class row with entropy exactly 10**-1? Not representable; instead check the rule through
    # edges placed exactly at computed values.
    x = torch.randn(64, 10, generator=torch.Generator().manual_seed(1))
    ent, _, _ = entropy_histogram(x.to(device), make_log10_edges(0.5, -3, 1))
    v = torch.log10(ent.double().cpu())
    edges = torch.tensor([-10.0, v[0].item(), v[0].item() + 1e-3, 10.0], dtype=torch.float64)
    _, bins, _ = entropy_histogram(x.to(device), edges)
    assert bins[0].item() == 1, "half-open bins: a value equal to the left edge belongs to that bin"


@cpu_and_cuda
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_rows_raise_naming_the_row(device, bad):
    x = torch.randn(100, 10)
    x[37, 4] = bad
    with pytest.raises(RuntimeError, match="row 37"):
        entropy_histogram(x.to(device), make_log10_edges(0.5, -3, 1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        entropy_histogram(torch.randn(10), make_log10_edges(0.5, -3, 1))
    with pytest.raises(ValueError, match="increasing"):
        entropy_histogram(torch.randn(4, 10), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="floating"):
        entropy_histogram(torch.ones(4, 10, dtype=torch.int64), make_log10_edges(0.5, -3, 1))
    with pytest.raises(ValueError, match="bin width"):
        make_log10_edges(0.0, -3, 1)


def test_non_contiguous_input_and_real_scale():
    x = torch.randn(1000, 20)[:, ::2]
    edges = make_log10_edges(0.25, -8, 1)
    a = entropy_histogram(x, edges)
    b = entropy_histogram_reference(x.contiguous().double(), edges)
    torch.testing.assert_close(a[0].double(), softmax_entropy_f64(x.double()), rtol=2e-5, atol=0)
    assert torch.equal(a[2], b[2])


def test_fake_tensor_shapes():
    """The op has a fake (meta) implementation, so it traces under torch.compile / FakeTensorMode."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(8, 10)
        e = torch.empty(5, dtype=torch.float64)
        ent, bins, counts = torch.ops.proxynas_fast.entropy_histogram(x, e)
    assert ent.shape == (8,) and bins.shape == (8,) and counts.shape == (4,)
