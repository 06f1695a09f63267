"""The instruction-set clones of the CPU mixed-node and pointwise-convolution kernels (baseline, AVX2+FMA,
AVX-512; see csrc/ops/cpu/cpu_isa.h): each level the CPU has is forced in turn (`mixed_node.set_cpu_isa`) and every
op is checked against its pure-PyTorch reference, in every dtype, on plane sizes that leave every vector tail
length (a clone that computes wrong fails here even where the default, best level is right). Also the switch
itself: its levels, its errors and the PROXYNAS_CPU_ISA environment variable."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_process import child_env
from proxynas_fast import extension
from proxynas_fast.ops import mixed_node as mn

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not extension.has_cpu_kernels(), reason="the extension is not built")]

REPO = Path(__file__).resolve().parents[1]
ALL_LEVELS = ["baseline", "avx2", "avx512"]
# Against the float64 reference: float32 accumulates (in any vector width), reduced precision rounds once.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}
# H*W = 1, 15, 49 (7x7), 111, 196 (14x14): every remainder class of 4/8/16-lane loops, and long planes.
SHAPES = [(3, 2, 1, 1), (2, 3, 5, 3), (3, 2, 7, 7), (2, 2, 37, 3), (2, 3, 14, 14)]


@pytest.fixture
def level(request):
    """Forces the parametrised level for the test, then restores the one before."""
    if request.param not in mn.cpu_isa_levels():
        pytest.skip(f"this CPU has no {request.param}")
    previous = mn.set_cpu_isa(request.param)
    yield request.param
    mn.set_cpu_isa(previous)


def _terms(shape, dtype, K=3):
    """K terms of `shape`; the last one is a channel block of a bigger tensor (another batch stride)."""
    g = torch.Generator().manual_seed(sum(shape))
    terms = [(torch.randn(shape, generator=g, dtype=torch.float64) * (1 + k) + k).to(dtype) for k in range(K - 1)]
    n, c, h, w = shape
    big = torch.randn(n, c + 2, h, w, generator=g, dtype=torch.float64).to(dtype)
    return terms + [big[:, 1:c + 1]]


def _close(got, want, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_level_matches_the_reference(level, dtype, shape):
    terms = _terms(shape, dtype)
    t64 = [t.double() for t in terms]
    K, C = len(terms), shape[1]
    g = torch.Generator().manual_seed(7)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    a, b, c = (torch.randn(K, C, generator=g) for _ in range(3))
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    mean, var = mn.channel_moments(terms)
    rmean, rvar = mn.channel_moments_reference(t64)
    _close(mean, rmean, stat_dtype)
    _close(var, rvar, stat_dtype)

    _close(mn.channel_weighted_sum(terms, a, b[0]),
           mn.channel_weighted_sum_reference(t64, a.double(), b[0].double()), dtype, scale=len(terms))

    sg, sgz = mn.channel_dot_sums(grad, terms)
    rsg, rsgz = mn.channel_dot_sums_reference(grad.double(), t64)
    _close(sg, rsg, stat_dtype, scale=10)
    _close(sgz, rsgz, stat_dtype, scale=10)

    outs = mn.channel_affine_combine(grad, terms, a, b, c)
    want = mn.channel_affine_combine_reference(grad.double(), t64, a.double(), b.double(), c.double())
    for got, w in zip(outs, want):
        _close(got, w, dtype, scale=4)


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
def test_every_level_propagates_nan_of_zero_weighted_terms(level):
    """0 * NaN is NaN in every clone (no fused or reassociated shortcut drops it)."""
    terms = _terms((2, 3, 7, 7), torch.float32)
    terms[1] = terms[1].clone()
    terms[1][1, 2, 3, 4] = float("nan")
    scale = torch.ones(3, 3)
    scale[1] = 0.0
    out = mn.channel_weighted_sum(terms, scale, torch.zeros(3))
    assert torch.isnan(out[1, 2, 3, 4]) and int(torch.isnan(out).sum()) == 1


def test_levels_and_switch():
    levels = mn.cpu_isa_levels()
    assert levels == ALL_LEVELS[:len(levels)] and levels[0] == "baseline"
    previous = mn.set_cpu_isa("baseline")
    try:
        assert mn.set_cpu_isa("auto") == "baseline"
        assert mn.set_cpu_isa(levels[-1]) == levels[-1], "auto must be the best level"
        for bad in ("sse9", "", "AVX2"):
            with pytest.raises(RuntimeError, match="unknown cpu isa"):
                mn.set_cpu_isa(bad)
        assert mn.set_cpu_isa("baseline") == levels[-1], "a refused name must leave the level alone"
        for missing in ALL_LEVELS[len(levels):]:
            with pytest.raises(RuntimeError, match="not available"):
                mn.set_cpu_isa(missing)
    finally:
        mn.set_cpu_isa(previous)


def _run_with_env(value: str) -> subprocess.CompletedProcess:
    code = ("import torch\nfrom proxynas_fast.ops import mixed_node as mn\n"
            "mn.channel_moments([torch.ones(1, 1, 2, 2)])\nprint(mn.set_cpu_isa('auto'))\n")
    env = child_env(PROXYNAS_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_sets_the_starting_level():
    done = _run_with_env("baseline")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "baseline"
    done = _run_with_env("avx3")
    assert done.returncode != 0 and "PROXYNAS_CPU_ISA=avx3: unknown cpu isa 'avx3'" in done.stderr


def test_a_bad_environment_level_is_named_and_can_be_replaced():
    code = ("import torch\nfrom proxynas_fast.ops import mixed_node as mn\nx = [torch.ones(1, 1, 2, 2)]\n"
            "try:\n    mn.channel_moments(x)\nexcept RuntimeError as e:\n    print('REFUSED', 'PROXYNAS_CPU_ISA' in str(e))\n"
            "print('PREVIOUS', mn.set_cpu_isa('baseline'))\nprint('MEAN', float(mn.channel_moments(x)[0]))\n")
    env = child_env(PROXYNAS_CPU_ISA="avx3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["REFUSED", "True", "PREVIOUS", "auto", "MEAN", "1.0"]


def test_the_switch_really_changes_the_code_that_runs():
    """Guards the clones themselves (not only their results): on a long float32 plane the baseline loop and the
    best level's wider vectors (with FMA) group and round the sums differently, so the bits differ; were the switch
    ignored, or the clones compiled to one code, they would be equal."""
    levels = mn.cpu_isa_levels()
    if len(levels) < 2:
        pytest.skip("this CPU runs only the baseline clone")
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(4, 3, 64, 64, generator=g)
    terms = [torch.randn(4, 3, 64, 64, generator=g) for _ in range(3)]
    results = {}
    for isa in (levels[0], levels[-1]):
        previous = mn.set_cpu_isa(isa)
        try:
            results[isa] = mn.channel_dot_sums(grad, terms)[1]
        finally:
            mn.set_cpu_isa(previous)
    torch.testing.assert_close(results[levels[0]], results[levels[-1]], rtol=1e-4, atol=1e-3)
    assert not torch.equal(results[levels[0]], results[levels[-1]])


# ----- the grouped pointwise convolution (csrc/ops/cpu/pw_conv2d_kernel.cpp) -----
# (groups, Ci, Co, H, W): pixel counts 1, 15, 49, 111, 196 (every tail of 2/4/8/16-lane vectors and of the
# 3-vector pixel tiles), channel counts with row tails (5, 7, 9) and whole tiles (8, 16).
PW_SHAPES = [(1, 5, 7, 1, 1), (3, 9, 5, 5, 3), (2, 16, 16, 7, 7), (2, 8, 9, 37, 3), (1, 7, 8, 14, 14)]


@pytest.mark.parametrize("level", ALL_LEVELS, indirect=True)
@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", PW_SHAPES)
def test_pw_conv2d_every_level_matches_the_reference(level, dtype, shape):
    from proxynas_fast.ops.pw_conv2d import pw_conv2d_reference

    E, Ci, Co, H, W = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(3, E * Ci, H, W, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(E, Co, Ci, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(3, E * Co, H, W, generator=g, dtype=torch.float64).to(dtype)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    ref = pw_conv2d_reference(x64, w64)
    rx, rw = torch.autograd.grad(ref, (x64, w64), grad.double())
    ops = torch.ops.proxynas_fast
    _close(ops.pw_conv2d(x, w), ref, dtype, scale=Ci)
    gx, gw = ops.pw_conv2d_backward(grad, x, w, [True, True])
    _close(gx, rx, dtype, scale=Co)
    _close(gw, rw, dtype, scale=3 * H * W)
