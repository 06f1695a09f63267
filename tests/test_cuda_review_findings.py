"""Findings of the CUDA-kernel review that are correctness matters, checked on the CPU (and on CUDA when present):
dw_conv2d's output size in the kernels and the fake kernel against conv2d, a mixed-node bias on another device, and
the entropy op at extreme logits against float64."""
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from devices import DEVICES, require_kernels
from proxynas_fast import extension
from proxynas_fast.ops import entropy_histogram, make_log10_edges
from proxynas_fast.ops.entropy_histogram import softmax_entropy_f64

ROOT = Path(__file__).resolve().parent.parent
needs_cpu_kernels = pytest.mark.skipif(not extension.has_cpu_kernels(), reason="the extension is not built")

# Every small and odd case: H in 1..3 and 7, W in 1..3, kernels 1/3/5, strides 1-2, paddings 0-2, dilations 1-2.
DW_CASES = list(itertools.product((1, 2, 3, 7), (1, 2, 3), (1, 3, 5), (1, 2), (0, 1, 2), (1, 2)))


def _dw_case_problem(h, w, k, s, p, d):
    """None when the kernel and the fake kernel agree with conv2d (groups=C) on this size, else what differs."""
    g = torch.Generator().manual_seed(h * 100 + w * 10 + k)
    x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(3, 1, k, k, generator=g, dtype=torch.float64)
    args = ([s, s], [p, p], [d, d])
    try:
        ref = F.conv2d(x, wt, None, s, p, d, groups=3)
    except RuntimeError:
        ref = None
    results = {}
    for name, run in (("kernel", lambda: torch.ops.proxynas_fast.dw_conv2d(x, wt, *args)),
                      ("fake", lambda: _on_fake(x, wt, args))):
        try:
            results[name] = run()
        except ValueError as e:
            if "dw_conv2d: output would be empty" not in str(e):
                return f"{name}: unclear error {e}"
            results[name] = None
    if ref is None:
        return None if results["kernel"] is None and results["fake"] is None else \
            f"conv2d refuses, kernel {_shape(results['kernel'])}, fake {_shape(results['fake'])}"
    if results["kernel"] is None or results["fake"] is None:
        return f"conv2d gives {tuple(ref.shape)}, kernel {_shape(results['kernel'])}, fake {_shape(results['fake'])}"
    if results["kernel"].shape != ref.shape or results["fake"].shape != ref.shape:
        return f"shapes: conv2d {tuple(ref.shape)}, kernel {_shape(results['kernel'])}, fake {_shape(results['fake'])}"
    if not torch.allclose(results["kernel"], ref, rtol=1e-12, atol=1e-12):
        return "values differ from conv2d"
    return None


def _on_fake(x, wt, args):
    with FakeTensorMode() as mode:
        return torch.ops.proxynas_fast.dw_conv2d(mode.from_tensor(x), mode.from_tensor(wt), *args)


def _shape(t):
    return "error" if t is None else tuple(t.shape)


@needs_cpu_kernels
def test_dw_conv2d_output_size_agrees_with_conv2d_and_the_fake_kernel():
    """conv2d's floor rule in the kernel (csrc/ops/dw_conv2d.h) and the fake kernel: H=2, K=3, S=2 gave Ho=1 in
    C++ (truncating division of -1) and 0 in the fake kernel, where conv2d refuses the input. Now the three agree
    on every size: the same shape and values, or a clear error from each."""
    problems = {c: why for c in DW_CASES if (why := _dw_case_problem(*c)) is not None}
    assert not problems, f"{len(problems)} of {len(DW_CASES)} sizes (H, W, K, S, P, D) differ, e.g. " + \
        "; ".join(f"{c}: {why}" for c, why in list(problems.items())[:5])


def test_dw_conv2d_case_list_covers_the_reported_size_and_both_outcomes():
    assert (2, 2, 3, 2, 0, 1) in DW_CASES  # the review's H=2, K=3, S=2
    empty = [c for c in DW_CASES if c[0] + 2 * c[4] < c[5] * (c[2] - 1) + 1]
    assert empty and len(empty) < len(DW_CASES)


_BIAS_SCRIPT = textwrap.dedent("""
    import torch
    import proxynas_fast.ops  # registers the fake kernels
    from proxynas_fast import extension
    assert extension.has_cpu_kernels(), extension.import_error()
    op = torch.ops.proxynas_fast.channel_weighted_sum.default
    terms = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    scale, bias = torch.randn(2, 3), torch.randn(3)
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    # The CPU kernel itself, handed a bias that is not on the CPU: the dispatcher would send a call with a meta
    # (or CUDA) bias elsewhere, so it is redispatched straight to the CPU kernel, as a kernel receives it.
    for name, args in (("bias", (terms, scale, bias.to("meta"), False)),
                       ("scale", (terms, scale.to("meta"), bias, False))):
        try:
            op.redispatch(cpu, *args)
        except ValueError as e:
            print(name, "error:", e)
        else:
            print(name, "no error")
""")


@needs_cpu_kernels
def test_mixed_node_bias_on_another_device_is_a_clear_error():
    """channel_weighted_sum's kernels read `bias` through a raw pointer without checking its device (a CPU bias
    reaches the CUDA kernel as a host pointer). The check now names it; on the CPU kernel a meta bias (null data)
    is the same mistake. A child process, since without the check the kernel reads through a null pointer."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _BIAS_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"child failed (rc {run.returncode}): {run.stderr[-2000:]}"
    assert "bias error: channel_weighted_sum: bias is on meta, expected cpu" in run.stdout, run.stdout
    assert "scale error: channel_weighted_sum: scale is on meta, expected cpu" in run.stdout, run.stdout


def _extreme_logits() -> torch.Tensor:
    """Rows with the maximum at 0 and the other classes at d in [-100, 0]: where exp(d) approximations err most
    (|d| large, near the float32 underflow at -87.3) and where e^d d terms still count."""
    g = torch.Generator().manual_seed(7)
    rows = []
    for dmin in (-1.0, -10.0, -20.0, -50.0, -80.0, -87.0, -87.3, -87.5, -90.0, -100.0):
        r = torch.empty(64).uniform_(dmin, 0.0, generator=g)
        r[0] = 0.0
        rows.append(r)
    for second in (-5.0, -17.0, -40.0, -70.0, -86.9, -87.4, -95.0, -100.0):  # one runner-up, the rest far below
        r = torch.full((64,), -100.0)
        r[0], r[1] = 0.0, second
        rows.append(r)
    r = torch.linspace(-100.0, 0.0, 1000)  # every d in the range
    rows.append(r[:64])
    x = torch.stack(rows)
    return torch.cat([x, x + 50.0, -x * 0.5 - 30.0])  # shifted: the kernel subtracts the row maximum itself


@pytest.mark.parametrize("device", DEVICES)
def test_entropy_at_extreme_logits_matches_float64(device):
    """|d| up to 100 against the float64 definition: relative error under 2e-5 wherever the entropy is a normal
    float32 well above the underflow of e^d (the kernels flush e^d to 0 below d = -87.3, as float32 does), and an
    absolute error under 1e-30 below it. The CUDA kernel is compiled without --use_fast_math (expf, not __expf)."""
    require_kernels(device)
    if not extension.has_kernels_for(device):
        pytest.fail(f"the compiled {device} kernel is missing ({extension.import_error()})")
    x = _extreme_logits()
    edges = make_log10_edges(0.5, -46, 1)
    ent, _, counts = entropy_histogram(x.to(device), edges)
    ref = softmax_entropy_f64(x.double())
    ent = ent.cpu().double()
    assert int(counts.sum()) == x.shape[0]
    big = ref > 1e-30
    rel = ((ent[big] - ref[big]).abs() / ref[big]).max().item()
    assert rel < 2e-5, f"max relative entropy error {rel}"
    assert ((ent[~big] - ref[~big]).abs() < 1e-30).all()
    assert big.sum() >= 0.8 * len(ref)
