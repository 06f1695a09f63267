"""The fused-cell kernels (`proxynas_fast.ops.dw_conv2d`, `proxynas_fast.ops.mixed_node`) against their
pure-PyTorch definitions, and gradcheck of their autograd wrappers, on every device with kernels."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from devices import cpu_and_cuda, require_kernels
from proxynas_fast import extension
from proxynas_fast.darts import fused
from proxynas_fast.ops import mixed_node as mn
from proxynas_fast.ops.dw_conv2d import dw_conv2d, dw_conv2d_reference
from proxynas_fast.ops.pool2d import pool2d, pool2d_reference

# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def _kernels_for_the_device(request):
    """A CUDA case skips only without a CUDA device; with one but without the CUDA kernels it fails."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "device" in callspec.params:
        require_kernels(callspec.params["device"])

needs_kernels = pytest.mark.skipif(not extension.has_cpu_kernels(), reason="the extension is not built")


# (kernel, dilation, stride, padding, multiplier): every DARTS case plus odd paddings and sizes
DW_CASES = [(3, 1, 1, 1, 1), (5, 1, 1, 2, 3), (3, 2, 1, 2, 2), (5, 2, 1, 4, 1), (3, 1, 2, 1, 4), (5, 1, 2, 2, 1),
            (3, 2, 2, 2, 2), (5, 2, 2, 4, 1), (3, 1, 1, 0, 1), (3, 1, 2, 0, 2), (5, 1, 1, 3, 1), (3, 1, 3, 1, 1)]


@needs_kernels
@cpu_and_cuda
@pytest.mark.parametrize("k,d,s,p,m", DW_CASES)
def test_dw_conv2d_matches_conv2d(device, k, d, s, p, m):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 20, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3 * m, 1, k, k, dtype=torch.float64, device=device, requires_grad=True)
    out = dw_conv2d(x, w, s, p, d)
    ref = dw_conv2d_reference(x, w, s, p, d)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(out, (x, w), g)
    rx, rw = torch.autograd.grad(ref, (x, w), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


@needs_kernels
@cpu_and_cuda
@pytest.mark.parametrize("k,d,s,p,m", [(3, 1, 1, 1, 2), (5, 2, 2, 4, 1), (3, 2, 1, 2, 1)])
def test_dw_conv2d_gradcheck(device, k, d, s, p, m):
    torch.manual_seed(1)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2 * m, 1, k, k, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dw_conv2d(a, b, s, p, d), (x, w))


@needs_kernels
@cpu_and_cuda
def test_dw_conv2d_float32_bfloat16_channels_last(device):
    torch.manual_seed(2)
    x = torch.randn(4, 8, 16, 16, device=device)
    w = torch.randn(16, 1, 3, 3, device=device)
    ref = dw_conv2d_reference(x.double(), w.double(), 1, 1, 1)
    torch.testing.assert_close(dw_conv2d(x, w, 1, 1, 1).double(), ref, atol=1e-5, rtol=1e-5)
    out_cl = dw_conv2d(x.to(memory_format=torch.channels_last), w, 1, 1, 1)
    torch.testing.assert_close(out_cl.double(), ref, atol=1e-5, rtol=1e-5)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out_bf = dw_conv2d(x, w, 1, 1, 1)
    assert out_bf.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf.double(), ref, atol=0.1, rtol=0.02)


def test_dw_conv2d_rejects_bad_shapes():
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="not a multiple"):
        dw_conv2d(x, torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match="input must be"):
        dw_conv2d(x[0], torch.randn(3, 1, 3, 3))


def _terms(device, dtype):
    base = torch.randn(3, 12, 5, 6, dtype=dtype, device=device)
    # a plain tensor and channel-block views of a bigger one (as the fused cell passes them)
    return [torch.randn(3, 4, 5, 6, dtype=dtype, device=device) * 2 + 1, base[:, 4:8], base[:, 8:12]]


@needs_kernels
@cpu_and_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_mixed_node_kernels_match_reference(device, dtype):
    torch.manual_seed(3)
    terms = _terms(device, dtype)
    g = torch.randn(3, 4, 5, 6, dtype=dtype, device=device)
    scale, bias = torch.randn(3, 4, device=device), torch.randn(4, device=device)
    a, b, c = (torch.randn(3, 4, device=device) for _ in range(3))
    tol = dict(atol=1e-5, rtol=1e-5) if dtype != torch.bfloat16 else dict(atol=0.05, rtol=0.02)
    for got, want in zip(mn.channel_moments(terms), mn.channel_moments_reference(terms)):
        torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(mn.channel_weighted_sum(terms, scale, bias),
                               mn.channel_weighted_sum_reference(terms, scale, bias), **tol)
    for got, want in zip(mn.channel_dot_sums(g, terms), mn.channel_dot_sums_reference(g, terms)):
        torch.testing.assert_close(got, want, **tol)
    for got, want in zip(mn.channel_affine_combine(g, terms, a, b, c),
                         mn.channel_affine_combine_reference(g, terms, a, b, c)):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.filterwarnings("ignore:proxynas_fast. no compiled")
@pytest.mark.parametrize("path", ["kernel", "reference"])
def test_mixed_node_kernels_reject_mismatched_terms(path, monkeypatch):
    # the kernels check their arguments themselves (mixed_node.h): the same ValueErrors as the reference path's
    if path == "reference":
        monkeypatch.setattr(extension, "_C", None)
    elif not extension.has_cpu_kernels():
        pytest.skip("needs the compiled extension")
    with pytest.raises(ValueError, match="channel_moments: term 1 has shape"):
        mn.channel_moments([torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5)])
    with pytest.raises(ValueError, match="channel_dot_sums: term 0 has dtype"):
        mn.channel_dot_sums(torch.randn(2, 3, 4, 4), [torch.randn(2, 3, 4, 4, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"channel_weighted_sum: (scale must be \[1, 3\]|bias must be \[3\])"):
        mn.channel_weighted_sum([torch.randn(2, 3, 4, 4)], torch.ones(1, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="needs at least one term"):
        mn.channel_moments([])
    with pytest.raises(ValueError, match=r"channel_affine_combine: gate must be \[2, 3\]"):
        mn.channel_affine_combine(torch.randn(2, 3, 4, 4), [torch.randn(2, 3, 4, 4)], *torch.ones(3, 1, 3),
                                  gate=torch.ones(3))


def _node_inputs(device, training):
    """A node with every kind of term: given pre-BN tensors, pooled states + BN (the node owns the pools),
    identity. Tensor slots: 0 h0, 1 h1, 2/3 the two channel blocks of z."""
    torch.manual_seed(4)
    C = 3
    h0 = torch.randn(2, C, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    h1 = torch.randn(2, C, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    z = torch.randn(2, 2 * C, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    bns = [nn.BatchNorm2d(C, affine=False).to(device, torch.float64).train(training) for _ in range(4)]
    for bn in bns:  # non-trivial running statistics for eval mode
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    T = fused._Term
    terms = [T("z", 2, 0, 4, bn=bns[0]), T("z", 3, 1, 6, bn=bns[1]),
             T("pool", 0, 0, 1, bn=bns[2], pool=0, owner=True), T("pool", 1, 1, 2, bn=bns[3], pool=1, owner=True),
             T("id", 1, 1, 3)]
    plan = fused._NodePlan([(0, -1), (1, -1), (0, 0), (1, 0)], terms, [0, 1]).finish()
    index = fused._node_index(plan, [t.bn is not None and training for t in terms], torch.device(device))
    pools = [fused._SharedPool(True, (3, 1, 1)), fused._SharedPool(False, (3, 1, 1))]  # max, avg (DARTS pooling)
    weights = torch.softmax(torch.randn(2, 8, dtype=torch.float64, device=device), -1).requires_grad_()
    return (plan, index, pools, fused._RunningStats()), weights, h0, h1, z, bns

@needs_kernels
@cpu_and_cuda
@pytest.mark.parametrize("training", [True, False])
def test_mixed_node_gradcheck_and_reference(device, training):
    spec, weights, h0, h1, z, bns = _node_inputs(device, training)
    flat = torch.tensor([t.row * 8 + t.col for t in spec[0].terms], device=device)

    def node(w, a, b, zz):
        z0, z1 = zz.split(3, dim=1)
        out = fused._MixedNode.apply(w.reshape(-1).index_select(0, flat), a, b, z0, z1, spec)
        for pool in spec[2]:
            pool.release()  # as the cell does after its forward
        spec[3].apply()
        return out

    assert torch.autograd.gradcheck(node, (weights, h0, h1, z))
    # and the value is the reference formula
    z0, z1 = z.split(3, dim=1)
    ref = (weights[0, 4] * bns[0](z0) + weights[1, 6] * bns[1](z1) + weights[0, 1] * bns[2](F.max_pool2d(h0, 3, 1, 1))
           + weights[1, 2] * bns[3](F.avg_pool2d(h1, 3, 1, 1, count_include_pad=False)) + weights[1, 3] * h1)
    torch.testing.assert_close(node(weights, h0, h1, z), ref)


# ----- pool2d -----
# (kernel, stride, padding): the DARTS pools (3x3, stride 1/2, pad 1) and other windows
POOL_CASES = [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 3, 1), (5, 2, 2), (3, 1, 0)]


@needs_kernels
@pytest.mark.parametrize("is_max", [True, False])
@pytest.mark.parametrize("k,s,p", POOL_CASES)
def test_pool2d_matches_torch(is_max, k, s, p):
    torch.manual_seed(5)
    x = torch.randn(2, 3, 9, 14, dtype=torch.float64, requires_grad=True)
    out = pool2d(x, is_max, k, s, p)
    ref = pool2d_reference(x, is_max, k, s, p)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


@needs_kernels
@pytest.mark.parametrize("is_max", [True, False])
def test_pool2d_gradcheck(is_max):
    torch.manual_seed(6)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: pool2d(a, is_max, 3, 2, 1), (x,))
    assert torch.autograd.gradcheck(lambda a: pool2d(a, is_max, 3, 1, 1), (x,))


@needs_kernels
def test_max_pool2d_ties_nan_and_infinities_like_torch():
    """Gradients go to the same winner as PyTorch's: the first maximum in row-major window order; NaN wins."""
    ties = torch.tensor([[1., 1., 0., 2.], [1., 1., 2., 2.], [-math.inf, 0., 3., 3.], [0., 1., 3., 1.]])
    with_nan = ties.clone()
    with_nan[3, 1] = float("nan")
    x = torch.stack([ties, with_nan]).unsqueeze(0).requires_grad_()  # channel 1 takes the NaN path
    g = torch.arange(1., 33.).view(1, 2, 4, 4)
    out, ref = pool2d(x, True, 3, 1, 1), pool2d_reference(x, True, 3, 1, 1)
    torch.testing.assert_close(out, ref, equal_nan=True)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    flat = torch.full((1, 1, 3, 3), -math.inf, requires_grad=True)  # every window all -inf
    torch.testing.assert_close(torch.autograd.grad(pool2d(flat, True, 3, 1, 1).sum(), flat)[0],
                               torch.autograd.grad(pool2d_reference(flat, True, 3, 1, 1).sum(), flat)[0])


@needs_kernels
@pytest.mark.parametrize("is_max", [True, False])
def test_pool2d_float32_bfloat16_channels_last(is_max):
    torch.manual_seed(7)
    x = torch.randn(4, 8, 16, 16)
    ref = pool2d_reference(x, is_max, 3, 2, 1)
    torch.testing.assert_close(pool2d(x, is_max, 3, 2, 1), ref, atol=1e-6, rtol=1e-6)
    out_cl = pool2d(x.to(memory_format=torch.channels_last), is_max, 3, 2, 1)
    torch.testing.assert_close(out_cl, ref, atol=1e-6, rtol=1e-6)
    xb = x.bfloat16().requires_grad_()
    out_bf = pool2d(xb, is_max, 3, 2, 1)
    assert out_bf.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf.float(), pool2d_reference(xb.float(), is_max, 3, 2, 1), atol=0.02, rtol=0.01)
    out_bf.float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()


def test_pool2d_rejects_bad_windows():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises((ValueError, RuntimeError), match="pad"):
        pool2d(x, True, 3, 1, 2)
    with pytest.raises(ValueError, match="input must be"):
        pool2d(x[0], True, 3, 1, 1)


@needs_kernels
def test_scaled_sum_of_the_bypassed_channels_gradcheck():
    """PC-DARTS's beta-weighted sum of the bypassed channels (`fused._ScaledSum`, on the mixed-node kernels):
    the value and the gradients of the betas and of every term (channel-block views, as the states' parts are)."""
    torch.manual_seed(9)
    states = [torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    betas = torch.softmax(torch.randn(3, dtype=torch.float64), 0).requires_grad_()

    def scaled_sum(b, *xs):
        return fused._ScaledSum.apply(b, *[x[:, 2:] for x in xs])

    assert torch.autograd.gradcheck(scaled_sum, (betas, *states))
    want = sum(b * x[:, 2:] for b, x in zip(betas, states))
    torch.testing.assert_close(scaled_sum(betas, *states), want, rtol=1e-12, atol=1e-12)
