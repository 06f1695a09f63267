"""One tester per custom op of `proxynas_fast._C` (tests/op_tester.py's `OpTester`: device x dtype x memory layout,
the float64 reference, gradcheck and opcheck written once); each tester says only what differs for its op, and
holds the tests of its op's own behaviour. CUDA cases skip only where no CUDA device exists (tests/devices.py).
"""
from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from devices import require_kernels
from op_tester import HALF, LAYOUTS, TOL, OpTester, assert_close_to_f64, kernel_layout_of, make_tensor, \
    widened
from proxynas_fast.ops import mixed_node as mn
from proxynas_fast.ops.dw_conv2d import dw_conv2d, dw_conv2d_reference
from proxynas_fast.ops.entropy_histogram import entropy_histogram_reference, make_log10_edges
from proxynas_fast.ops.pool2d import pool2d, pool2d_reference
from proxynas_fast.ops.pw_conv2d import pw_conv2d, pw_conv2d_reference

pytestmark = pytest.mark.usefixtures("single_thread")

ops = torch.ops.proxynas_fast
REPO = Path(__file__).resolve().parents[1]


class RecordMasks(TorchDispatchMode):
    """Records the output_mask (last argument) of every call of one backward op."""

    def __init__(self, backward_op):
        super().__init__()
        self.op, self.masks = backward_op, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is self.op:
            self.masks.append(list(args[-1]))
        return func(*args, **(kwargs or {}))


class TestDwConv2d(OpTester):
    cases = {  # kernel, stride, padding, dilation, multiplier: the DARTS convolutions, strided and dilated
        "sep3": (3, 1, 1, 1, 1), "sep5_s2_m2": (5, 2, 2, 1, 2), "dil3": (3, 1, 2, 2, 1), "dil5_s2_m3": (5, 2, 4, 2, 3),
    }
    differentiable = (0, 1)

    def sample(self, case, dtype, device, layout):
        k, _, _, _, m = self.cases[case]
        return make_tensor((2, 3, 9, 10), dtype, device, layout), make_tensor((3 * m, 1, k, k), dtype, device,
                                                                               "contiguous", seed=1)

    def forward(self, inputs, case):
        _, s, p, d, _ = self.cases[case]
        return ops.dw_conv2d(*inputs, [s, s], [p, p], [d, d])

    def reference(self, inputs, case):
        _, s, p, d, _ = self.cases[case]
        return dw_conv2d_reference(*inputs, s, p, d)

    def backward(self, grad, inputs, out, case):
        _, s, p, d, _ = self.cases[case]
        return ops.dw_conv2d_backward(grad, *inputs, [s, s], [p, p], [d, d], [True, True])

    def tolerances(self, dtype):  # a weight gradient sums N*Ho*Wo products
        return TOL[dtype], [TOL[dtype], widened(TOL[dtype]) if dtype in HALF else TOL[dtype]]

    def gradcheck_call(self, device):
        x = make_tensor((2, 2, 6, 7), torch.float64, device, "strided").requires_grad_()
        w = make_tensor((4, 1, 3, 3), torch.float64, device, "contiguous", seed=1).requires_grad_()
        return (lambda a, b: dw_conv2d(a, b, 2, 2, 2)), (x, w)

    def opcheck_calls(self, device, layout):
        x = make_tensor((2, 3, 7, 8), torch.float32, device, layout).requires_grad_()
        w = make_tensor((6, 1, 3, 3), torch.float32, device, "contiguous", seed=1).requires_grad_()
        g = make_tensor((2, 6, 7, 8), torch.float32, device, layout, seed=2)
        return [(ops.dw_conv2d, (x, w, [1, 1], [1, 1], [1, 1])),
                (ops.dw_conv2d_backward, (g, x.detach(), w.detach(), [1, 1], [1, 1], [1, 1], [True, True]))]

    def test_backward_computes_only_the_gradients_the_pass_uses(self, device):
        """autograd.grad with respect to the input (what the DARTS architecture step asks of the convolutions below
        its alphas) runs the backward kernel without the weight gradient, for a leaf weight too (the C++ autograd
        asks the engine, csrc/ops/autograd/); .backward() asks for both; gradients equal."""
        require_kernels(device)
        x = make_tensor((2, 3, 7, 8), torch.float32, device, "contiguous").requires_grad_()
        w = make_tensor((3, 1, 3, 3), torch.float32, device, "contiguous", seed=1).requires_grad_()
        for weight in (w, torch.cat([w, w])):  # a leaf weight, and a stacked one (as the fused cell passes)
            with RecordMasks(ops.dw_conv2d_backward) as recorded:
                (gx,) = torch.autograd.grad(dw_conv2d(x * 1.0, weight, 1, 1, 1).square().sum(), [x])
                x.grad = None
                dw_conv2d(x * 1.0, weight, 1, 1, 1).square().sum().backward()
            assert recorded.masks == [[True, False], [True, True]]  # leaf or not: the engine says which it will use
            torch.testing.assert_close(gx, x.grad, rtol=0, atol=0)


class TestPool2d(OpTester):
    """CPU kernel only: on CUDA the wrapper uses PyTorch's pooling."""
    devices = ["cpu"]
    cases = {f"{'max' if is_max else 'avg'}_k{k}_s{s}_p{p}": (is_max, k, s, p)
             for is_max in (True, False) for k, s, p in ((3, 1, 1), (3, 2, 1), (2, 2, 0))}

    def sample(self, case, dtype, device, layout):
        return (make_tensor((2, 3, 9, 10), dtype, device, layout),)

    def forward(self, inputs, case):
        is_max, k, s, p = self.cases[case]
        return ops.pool2d(inputs[0], is_max, [k, k], [s, s], [p, p])

    def reference(self, inputs, case):
        is_max, k, s, p = self.cases[case]
        return pool2d_reference(inputs[0], is_max, k, s, p)

    def backward(self, grad, inputs, out, case):
        is_max, k, s, p = self.cases[case]
        return (ops.pool2d_backward(grad, inputs[0], out, is_max, [k, k], [s, s], [p, p]),)

    def gradcheck_call(self, device):
        x = make_tensor((2, 2, 6, 7), torch.float64, device, "block").requires_grad_()
        return (lambda a: (pool2d(a, True, 3, 1, 1), pool2d(a, False, 3, 1, 1))), (x,)

    def opcheck_calls(self, device, layout):
        x = make_tensor((2, 3, 7, 8), torch.float32, device, layout).requires_grad_()
        out = ops.pool2d(x.detach(), True, [3, 3], [1, 1], [1, 1])
        g = make_tensor(tuple(out.shape), torch.float32, device, layout, seed=2)
        return [(ops.pool2d, (x, True, [3, 3], [1, 1], [1, 1])),
                (ops.pool2d_backward, (g, x.detach(), out, True, [3, 3], [1, 1], [1, 1]))]

    @pytest.mark.parametrize("is_max", [True, False])
    def test_reads_a_channel_block_in_place(self, is_max):
        """PC-DARTS pools the first C/k channels of every state, a channel-block view: the kernels read its planes in
        place, forward and backward (they copied it to a contiguous tensor on every call: ~20 ms of the ImageNet
        search step at 2 threads)."""
        require_kernels("cpu")
        x = make_tensor((2, 3, 9, 10), torch.float32, "cpu", "block")
        g = make_tensor((2, 3, 5, 5), torch.float32, "cpu", "contiguous", seed=2)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = ops.pool2d(x, is_max, [3, 3], [2, 2], [1, 1])
            gx = ops.pool2d_backward(g, x, out, is_max, [3, 3], [2, 2], [1, 1])
        copies = [e.name for e in prof.events() if e.name in ("aten::clone", "aten::copy_", "aten::contiguous")]
        assert copies == []
        x64 = x.double().requires_grad_()
        ref = pool2d_reference(x64, is_max, 3, 2, 1)
        assert_close_to_f64(out, ref, torch.float32)
        assert_close_to_f64(gx, torch.autograd.grad(ref, x64, g.double())[0], torch.float32)


    @pytest.mark.parametrize("is_max", [True, False])
    def test_autograd_is_cpp_and_the_average_keeps_no_tensor(self, is_max):
        """pool2d's autograd runs in C++ (csrc/ops/autograd/pool2d_autograd.cpp; the fused cell pools ~320 times a
        search step, each call through torch.library's Python autograd cost ~60 us): max pooling saves its input and
        output, average pooling only one-element stand-ins; gradients equal PyTorch's."""
        require_kernels("cpu")
        x = make_tensor((2, 3, 9, 10), torch.float64, "cpu", "contiguous").requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.untyped_storage().nbytes()) or t,
                                                      lambda t: t):
            out = pool2d(x * 1.0, is_max, 3, 2, 1)
        assert "Pool2dFunction" in out.grad_fn.name()
        big = x.numel() * x.element_size()
        assert sorted(saved)[-1] == (big if is_max else 8)  # the input itself, or a one-element stand-in
        g = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, g)
        (want,) = torch.autograd.grad(pool2d_reference(x, is_max, 3, 2, 1), x, g)
        torch.testing.assert_close(gx, want, rtol=0, atol=1e-12)


PW_CASES = {  # groups E, input channels Ci, output channels Co, plane: tiles with row and pixel tails, DARTS sizes
    "e1_odd": (1, 5, 7, (3, 5)), "e3_odd": (3, 3, 2, (7, 7)), "e2_16": (2, 16, 16, (9, 10)),
    "e4_8x8_c24": (4, 24, 24, (8, 8)),
}


def _pw_sample(case, dtype, device, layout):
    E, Ci, Co, (H, W) = PW_CASES[case]
    return (make_tensor((3, E * Ci, H, W), dtype, device, layout),
            make_tensor((E, Co, Ci, 1), dtype, device, "contiguous", seed=1)[..., 0])


class TestPwConv2d(OpTester):
    """CPU kernel only: elsewhere the wrapper runs torch.matmul."""
    devices = ["cpu"]
    cases = PW_CASES
    differentiable = (0, 1)

    def sample(self, case, dtype, device, layout):
        return _pw_sample(case, dtype, device, layout)

    def forward(self, inputs, case):
        return ops.pw_conv2d(*inputs)

    def reference(self, inputs, case):
        return pw_conv2d_reference(*inputs)

    def backward(self, grad, inputs, out, case):
        return ops.pw_conv2d_backward(grad, *inputs, [True, True])

    def tolerances(self, dtype):  # sums of Ci (forward) and N*H*W (weight) products
        tol = widened(TOL[dtype]) if dtype in HALF else TOL[dtype]
        return tol, [tol, tol]

    def gradcheck_call(self, device):
        x = make_tensor((2, 6, 5, 3), torch.float64, device, "strided").requires_grad_()
        w = make_tensor((2, 5, 3, 1), torch.float64, device, "contiguous", seed=1)[..., 0].requires_grad_()
        return pw_conv2d, (x, w)

    def opcheck_calls(self, device, layout):
        x = make_tensor((2, 6, 7, 8), torch.float32, device, layout).requires_grad_()
        w = make_tensor((2, 4, 3, 1), torch.float32, device, "contiguous", seed=1)[..., 0].requires_grad_()
        g = make_tensor((2, 8, 7, 8), torch.float32, device, layout, seed=2)
        return [(ops.pw_conv2d, (x, w)), (ops.pw_conv2d_backward, (g, x.detach(), w.detach(), [True, True]))]

    def test_reference_is_the_grouped_1x1_convolution(self, case):
        x, w = _pw_sample(case, torch.float64, "cpu", "contiguous")
        E, Co, Ci = w.shape
        torch.testing.assert_close(pw_conv2d_reference(x, w), F.conv2d(x, w.reshape(E * Co, Ci, 1, 1), groups=E))

    def test_backward_computes_only_the_gradients_the_pass_uses(self):
        """As for dw_conv2d: the architecture step's autograd.grad w.r.t. the input skips the weight gradient of a
        stacked weight (what the fused cell passes); .backward() computes both; equal input gradients."""
        require_kernels("cpu")
        x = make_tensor((2, 6, 5, 4), torch.float32, "cpu", "contiguous").requires_grad_()
        w = make_tensor((2, 3, 3, 1), torch.float32, "cpu", "contiguous", seed=1)[..., 0].requires_grad_()
        weight = torch.stack([w[0], w[1]])
        with RecordMasks(ops.pw_conv2d_backward) as recorded:
            (gx,) = torch.autograd.grad(pw_conv2d(x * 1.0, weight).square().sum(), [x])
            pw_conv2d(x * 1.0, weight).square().sum().backward()
        assert recorded.masks == [[True, False], [True, True]]
        torch.testing.assert_close(gx, x.grad, rtol=0, atol=0)


    def test_weight_gradient_does_not_depend_on_the_thread_count(self):
        """Each thread owns whole (group, row block) items and sums over the batch in a fixed order."""
        require_kernels("cpu")
        x = make_tensor((16, 2 * 24, 7, 7), torch.float32, "cpu", "contiguous")
        w = make_tensor((2, 24, 24, 1), torch.float32, "cpu", "contiguous", seed=1)[..., 0]
        g = make_tensor((16, 2 * 24, 7, 7), torch.float32, "cpu", "contiguous", seed=2)
        before = torch.get_num_threads()
        try:
            grads = []
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                grads.append(ops.pw_conv2d_backward(g, x, w, [True, True]))
        finally:
            torch.set_num_threads(before)
        for gx, gw in grads[1:]:
            assert torch.equal(gx, grads[0][0]) and torch.equal(gw, grads[0][1])

    def test_bad_shapes_are_named(self):
        require_kernels("cpu")
        with pytest.raises(ValueError, match=r"pw_conv2d: input has 5 channels, weight \(2, 3, 3\)"):
            pw_conv2d(torch.randn(1, 5, 2, 2), torch.randn(2, 3, 3))
        with pytest.raises(RuntimeError, match="pw_conv2d: input has 5 channels"):
            ops.pw_conv2d(torch.randn(1, 5, 2, 2), torch.randn(2, 3, 3))
        with pytest.raises(ValueError, match=r"pw_conv2d: weight must be \[E, Co, Ci\]"):
            pw_conv2d(torch.randn(1, 6, 2, 2), torch.randn(6, 3, 1, 1))


class TestPwConv2dGroups(OpTester):
    """pw_conv2d_groups: group e's output is its own tensor, equal to channel block e of pw_conv2d's (bit for bit:
    the same kernel), so it is checked against pw_conv2d rather than the float64 reference; its backward takes
    one gradient per group (None for a group the loss does not reach) and gives pw_conv2d_backward's gradients
    of the concatenation."""
    devices = ["cpu"]
    cases = PW_CASES

    def test_matches_reference(self, device, dtype, layout, case):
        require_kernels(device)
        E, Ci, Co, (H, W) = PW_CASES[case]
        x, w = _pw_sample(case, dtype, device, layout)
        outs = ops.pw_conv2d_groups(x, w)
        whole = ops.pw_conv2d(x, w)
        assert len(outs) == E
        for out, block in zip(outs, whole.split(Co, dim=1)):
            assert out.dtype == dtype and out.shape == (3, Co, H, W)
            assert out.is_contiguous(memory_format=kernel_layout_of(x))
            assert torch.equal(out, block)
        grads = [make_tensor((3, Co, H, W), dtype, device, layout, seed=2 + e) for e in range(E)]
        if E > 1:
            grads[1] = None
        full = torch.cat([torch.zeros(3, Co, H, W, dtype=dtype) if g is None else g for g in grads], dim=1)
        gx, gw = ops.pw_conv2d_groups_backward(grads, x, w, [True, True])
        want_x, want_w = ops.pw_conv2d_backward(full, x, w, [True, True])
        assert gx.dtype == dtype and gx.is_contiguous(memory_format=kernel_layout_of(x))
        torch.testing.assert_close(gx, want_x, rtol=0, atol=0)
        torch.testing.assert_close(gw, want_w, rtol=0, atol=0)

    def gradcheck_call(self, device):
        x = make_tensor((2, 6, 5, 3), torch.float64, device, "strided").requires_grad_()
        w = make_tensor((2, 5, 3, 1), torch.float64, device, "contiguous", seed=1)[..., 0].requires_grad_()
        return (lambda a, b: tuple(ops.pw_conv2d_groups(a, b))), (x, w)

    def test_gradcheck_with_one_group_reaching_the_loss(self):
        """The other group's gradient is never made."""
        require_kernels("cpu")
        _, (x, w) = self.gradcheck_call("cpu")
        assert torch.autograd.gradcheck(lambda a, b: ops.pw_conv2d_groups(a, b)[1], (x, w))

    def opcheck_calls(self, device, layout):
        x = make_tensor((2, 6, 7, 8), torch.float32, device, layout).requires_grad_()
        w = make_tensor((2, 4, 3, 1), torch.float32, device, "contiguous", seed=1)[..., 0].requires_grad_()
        g = [make_tensor((2, 4, 7, 8), torch.float32, device, layout, seed=2), None]
        return [(ops.pw_conv2d_groups, (x, w)),
                (ops.pw_conv2d_groups_backward, (g, x.detach(), w.detach(), [True, True]))]

    def test_backward_computes_only_the_gradients_the_pass_uses(self):
        require_kernels("cpu")
        x = make_tensor((2, 6, 5, 4), torch.float32, "cpu", "contiguous").requires_grad_()
        w = make_tensor((2, 3, 3, 1), torch.float32, "cpu", "contiguous", seed=1)[..., 0].requires_grad_()
        weight = torch.stack([w[0], w[1]])
        with RecordMasks(ops.pw_conv2d_groups_backward) as recorded:
            (gx,) = torch.autograd.grad(sum(y.square().sum() for y in ops.pw_conv2d_groups(x * 1.0, weight)), [x])
            sum(y.square().sum() for y in ops.pw_conv2d_groups(x * 1.0, weight)).backward()
        assert recorded.masks == [[True, False], [True, True]]
        torch.testing.assert_close(gx, x.grad, rtol=0, atol=0)



# ======================================================================================================
# fake kernels report the real layout (fault 7 of issue 12: dw_conv2d's said contiguous for channels_last)
# ======================================================================================================
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ["dw_conv2d", "dw_conv2d_backward", "pool2d", "pool2d_backward", "pw_conv2d",
                                "pw_conv2d_backward"])
def test_fake_kernel_strides_equal_the_real_ones(op, layout):
    require_kernels("cpu")
    x = make_tensor((2, 3, 7, 8), torch.float32, "cpu", layout)
    w = make_tensor((6, 1, 3, 3), torch.float32, "cpu", "contiguous", seed=1)
    pooled = ops.pool2d(x, True, [3, 3], [1, 1], [1, 1])
    g6 = make_tensor((2, 6, 7, 8), torch.float32, "cpu", layout, seed=2)
    calls = {
        "dw_conv2d": lambda a: ops.dw_conv2d(a[0], a[1], [1, 1], [1, 1], [1, 1]),
        "dw_conv2d_backward": lambda a: ops.dw_conv2d_backward(a[2], a[0], a[1], [1, 1], [1, 1], [1, 1],
                                                               [True, True])[0],
        "pool2d": lambda a: ops.pool2d(a[0], True, [3, 3], [1, 1], [1, 1]),
        "pool2d_backward": lambda a: ops.pool2d_backward(a[3], a[0], a[3], True, [3, 3], [1, 1], [1, 1]),
        "pw_conv2d": lambda a: ops.pw_conv2d(a[0], a[1].reshape(-1)[:18].view(1, 6, 3)),
        "pw_conv2d_backward": lambda a: ops.pw_conv2d_backward(a[2], a[0], a[1].reshape(-1)[:18].view(1, 6, 3),
                                                               [True, True])[0],
    }
    real = calls[op]((x, w, g6, pooled))
    with FakeTensorMode() as mode:
        fake = calls[op](tuple(mode.from_tensor(t) for t in (x, w, g6, pooled)))
    assert fake.shape == real.shape and fake.dtype == real.dtype
    assert fake.stride() == real.stride(), f"{op} on {layout} input: fake strides {fake.stride()}, " \
                                           f"real {real.stride()}"


# ======================================================================================================
# mixed-node kernels: channel_moments, channel_weighted_sum, channel_dot_sums, channel_affine_combine
# ======================================================================================================
def _terms(K, dtype, device, layout):
    return [make_tensor((2, 3, 4, 5), dtype, device, layout, scale=1 + k % 3, seed=10 + k) for k in range(K)]


def _coeffs(K, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(K, 3, generator=g).to(device) for _ in range(3)]


class TestMixedNode(OpTester):
    """Four ops checked together on one set of terms; not differentiable themselves (the fused node's autograd
    over them is gradchecked in tests/test_fused_kernels.py)."""
    # 3 terms, one launch's worth (32), and past it: 33, and 35 = the last node of every DARTS cell (5 edges x 7).
    cases = {f"K{K}": K for K in (3, 32, 33, 35)}
    opcheck_layouts = ["block", "channels_last"]  # terms; the gradient in another layout (see opcheck_calls)
    test_gradcheck = None

    def test_matches_reference(self, device, dtype, layout, case):
        require_kernels(device)
        K = self.cases[case]
        terms = _terms(K, dtype, device, layout)
        t64 = [t.double() for t in terms]
        grad = make_tensor((2, 3, 4, 5), dtype, device, layout, seed=99)
        a, b, c = _coeffs(K, device)
        stat_tol = TOL[torch.float64] if dtype == torch.float64 else TOL[torch.float32]

        mean, var = ops.channel_moments(terms)
        assert mean.dtype == mn._stats_dtype(terms[0]) and mean.shape == (K, 3)
        rmean, rvar = mn.channel_moments_reference(t64)
        torch.testing.assert_close(mean.double(), rmean, **stat_tol)
        torch.testing.assert_close(var.double(), rvar, **stat_tol)

        # Outputs in channels_last exactly for channels_last inputs (the "rows" layout), else contiguous.
        out_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        out = ops.channel_weighted_sum(terms, a, b[0])
        assert out.dtype == dtype and out.is_contiguous(memory_format=out_format)
        assert_close_to_f64(out, mn.channel_weighted_sum_reference(t64, a.double(), b[0].double()), dtype)

        sg, sgz = ops.channel_dot_sums(grad, terms)
        rsg, rsgz = mn.channel_dot_sums_reference(grad.double(), t64)
        torch.testing.assert_close(sg.double(), rsg, **widened(stat_tol))
        torch.testing.assert_close(sgz.double(), rsgz, **widened(stat_tol))

        outs = ops.channel_affine_combine(grad, terms, a, b, c)
        want = mn.channel_affine_combine_reference(grad.double(), t64, a.double(), b.double(), c.double())
        assert len(outs) == K
        for got, w in zip(outs, want):
            assert got.dtype == dtype and got.is_contiguous(memory_format=out_format)
            assert_close_to_f64(got, w, dtype)

    def opcheck_calls(self, device, layout):
        calls = []
        for K in (3, 35):
            terms = _terms(K, torch.float32, device, layout)
            a, b, c = _coeffs(K, device)
            gate = torch.stack([a[0], b[0]])
            calls += [(ops.channel_moments, (terms,)), (ops.channel_weighted_sum, (terms, a, b[0])),
                      (ops.channel_weighted_sum, (terms[:1], a[:1], b[0], True))]
            for grad_layout in (["channels_last"] if layout == "block" else ["contiguous", "channels_last"]):
                grad = make_tensor((2, 3, 4, 5), torch.float32, device, grad_layout, seed=99)
                calls += [(ops.channel_dot_sums, (grad, terms)), (ops.channel_affine_combine, (grad, terms, a, b, c)),
                          (ops.channel_dot_sums, (grad, terms, gate)),
                          (ops.channel_affine_combine, (grad, terms, a, b, c, gate))]
        return calls

    # The ReLU folded into a one-term BatchNorm: shapes with one plane/chunk, and (channels_last) many chunks of rows
    # whose last block is partial (C = 24 and 3 are not whole vectors).
    RELU_SHAPES = [(2, 3, 4, 5), (3, 24, 23, 21), (3, 3, 23, 21)]


    @pytest.mark.parametrize("shape", RELU_SHAPES)
    def test_relu_and_gate_are_a_relu_after_the_batch_norm(self, device, dtype, layout, shape):
        """channel_weighted_sum(relu=True) is relu of the sum; the backward ops with gate = (scale; shift) read the
        gradient exactly as aten's relu backward reads it on that output (threshold_backward(grad, out, 0)), and only
        terms[0] gates. So a BatchNorm + ReLU needs neither the ReLU's pass nor its gradient's."""
        require_kernels(device)
        if shape != self.RELU_SHAPES[0] and (device == "cuda" or layout in ("block", "strided")):
            pytest.skip("the chunked rows layout is the CPU kernels' (channels_last and contiguous cover planes)")
        C = shape[1]
        g = torch.Generator().manual_seed(3)
        z = make_tensor(shape, dtype, device, layout, scale=2.0, seed=5)
        other = make_tensor(shape, dtype, device, layout, seed=8)
        grad = make_tensor(shape, dtype, device, layout, seed=6)
        scale = torch.randn(1, C, generator=g).to(device)  # negative scales too (an affine BatchNorm)
        shift = torch.randn(C, generator=g).to(device)
        out = ops.channel_weighted_sum([z], scale, shift, True)
        plain = ops.channel_weighted_sum([z], scale, shift)
        assert torch.equal(out, torch.relu(plain)) and 0 < int((out == 0).sum()) < out.numel()
        assert_close_to_f64(out, mn.channel_weighted_sum_reference([z.double()], scale.double(), shift.double(),
                                                                   relu=True), dtype)
        gate = torch.stack([scale[0], shift])
        through = torch.ops.aten.threshold_backward(grad, out, 0)  # what autograd's relu backward would pass on
        terms, t64 = [z, other], [z.double(), other.double()]
        stat_tol = TOL[torch.float64] if dtype == torch.float64 else TOL[torch.float32]
        tol = dict(rtol=stat_tol["rtol"], atol=stat_tol["atol"] * 10)
        sg, sgz = ops.channel_dot_sums(grad, terms, gate)
        rsg, rsgz = mn.channel_dot_sums_reference(through.double(), t64)
        torch.testing.assert_close(sg.double(), rsg, **tol)
        torch.testing.assert_close(sgz.double(), rsgz, **tol)
        a, b, c = (v[:2].repeat(1, C)[:, :C].contiguous() for v in _coeffs(2, device))
        outs = ops.channel_affine_combine(grad, terms, a, b, c, gate)
        want = mn.channel_affine_combine_reference(through.double(), t64, a.double(), b.double(), c.double())
        for got, w in zip(outs, want):
            assert got.dtype == dtype
            assert_close_to_f64(got, w, dtype)
        # the reference path's gate is the same
        for got, w in zip(mn.channel_affine_combine_reference(grad, terms, a, b, c, gate),
                          mn.channel_affine_combine_reference(through, terms, a, b, c)):
            torch.testing.assert_close(got, w)

    def test_gate_is_checked(self):
        require_kernels("cpu")
        grad, z = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        with pytest.raises(ValueError, match=r"channel_dot_sums: gate must be \[2, 3\], got \[2, 4\]"):
            ops.channel_dot_sums(grad, [z], torch.zeros(2, 4))
        with pytest.raises(ValueError, match="channel_affine_combine: a gate needs a first term"):
            ops.channel_affine_combine(grad, [], torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 3),
                                       torch.zeros(2, 3))

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("C", [24, 3, 16])
    def test_kernels_read_channels_last_in_place_over_many_chunks(self, dtype, C):
        """The ImageNet stem's BatchNorms run on the mixed-node kernels in channels_last (rows of C channels): the CPU
        kernels read and write that layout in place, in fixed chunks of rows combined in order (a result independent
        of the thread count); C = 24 and 3 leave a row that is not a whole number of vectors, and the last chunk and
        block are partial. Before, each call copied every channels_last tensor to planes and back."""
        require_kernels("cpu")
        shape = (3, C, 23, 21)  # 1,449 rows: several ~8k-element chunks and a partial last block
        terms = [make_tensor(shape, dtype, "cpu", "channels_last", scale=2.0, seed=k) + k for k in range(2)]
        grad = make_tensor(shape, dtype, "cpu", "channels_last", seed=7)
        a, b, c = (torch.randn(2, C, generator=torch.Generator().manual_seed(s)) for s in range(3))
        t64 = [t.double() for t in terms]

        def run():
            return (ops.channel_moments(terms), ops.channel_weighted_sum(terms, a, b[0]),
                    ops.channel_dot_sums(grad, terms), ops.channel_affine_combine(grad, terms, a, b, c))

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            (mean, var), out, (sg, sgz), outs = run()
        copies = [e.name for e in prof.events()  # of the data (the [K, C] statistics are cast to float32)
                  if e.name in ("aten::clone", "aten::copy_", "aten::contiguous") and list(shape) in e.input_shapes]
        assert copies == []
        stat_tol = TOL[torch.float64] if dtype == torch.float64 else TOL[torch.float32]
        rmean, rvar = mn.channel_moments_reference(t64)
        torch.testing.assert_close(mean.double(), rmean, **stat_tol)
        torch.testing.assert_close(var.double(), rvar, **stat_tol)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close_to_f64(out, mn.channel_weighted_sum_reference(t64, a.double(), b[0].double()), dtype)
        rsg, rsgz = mn.channel_dot_sums_reference(grad.double(), t64)
        tol = dict(rtol=stat_tol["rtol"], atol=stat_tol["atol"] * 10)
        torch.testing.assert_close(sg.double(), rsg, **tol)
        torch.testing.assert_close(sgz.double(), rsgz, **tol)
        for got, w in zip(outs, mn.channel_affine_combine_reference(grad.double(), t64, a.double(), b.double(),
                                                                    c.double())):
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert_close_to_f64(got, w, dtype)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            again = run()
        finally:
            torch.set_num_threads(threads)
        for x, y in zip(torch.utils._pytree.tree_leaves(((mean, var), out, (sg, sgz), outs)),
                        torch.utils._pytree.tree_leaves(again)):
            assert torch.equal(x, y)

    @pytest.mark.parametrize("K", [33, 35])
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_weighted_sum_rounds_once_past_one_launch(self, device, dtype, K):
        """Fault 3 of issue 12: with more terms than one CUDA launch takes (32), the partial sum must not be
        rounded to bf16/fp16 between launches. Terms of ones, bias 1: after the first 32 terms the sum is 1 + 0.375
        ulp (rounds down to 1), the rest add 0.25 ulp: the exact 1 + 0.625 ulp rounds up to 1 + ulp. Rounding in
        between gives 1 + 0.25 ulp -> 1."""
        require_kernels(device)
        ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
        terms = [torch.ones(2, 3, 4, 5, dtype=dtype, device=device) for _ in range(K)]
        scale = torch.zeros(K, 3, device=device)
        scale[0] = 0.375 * ulp
        scale[32:] = 0.25 * ulp / (K - 32)
        bias = torch.ones(3, device=device)
        out = ops.channel_weighted_sum(terms, scale, bias)
        want = mn.channel_weighted_sum_reference([t.double() for t in terms], scale.double(), bias.double())
        assert torch.equal(want.to(dtype), torch.full_like(out, 1 + ulp))
        assert torch.equal(out, torch.full_like(out, 1 + ulp))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    @pytest.mark.parametrize("K", [3, 35])
    def test_weighted_sum_propagates_nonfinite_zero_weighted_terms(self, device, K, bad):
        """Fault 6 of issue 12: 0 * NaN and 0 * inf are NaN, in the reference and in both kernels (the CPU kernel
        used to skip terms whose scale is 0)."""
        require_kernels(device)
        terms = _terms(K, torch.float32, device, "contiguous")
        terms[1] = terms[1].clone()
        terms[1][0, 2, 1, 1] = bad
        scale, bias, _ = _coeffs(K, device)
        scale[1] = 0.0
        out = ops.channel_weighted_sum(terms, scale, bias[0])
        ref = mn.channel_weighted_sum_reference(terms, scale, bias[0])
        assert torch.isnan(ref[0, 2, 1, 1]) and torch.isnan(out[0, 2, 1, 1])
        assert int(torch.isnan(out).sum()) == 1
        torch.testing.assert_close(out, ref, equal_nan=True)


# ======================================================================================================
# entropy_histogram
# ======================================================================================================
def _logits(dtype, device, layout, n=257, classes=10):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 2 * classes, generator=g, dtype=torch.float64) * torch.logspace(-2, 1.2, n)[:, None]
    x = x[:, ::2] if layout == "strided" else x[:, :classes].contiguous()
    return x.to(device=device, dtype=dtype)


class TestEntropyHistogram(OpTester):
    """Logits [N, classes] (contiguous or strided rows) -> (entropies in float32, bins, counts); no autograd
    (entropies are data, not a loss), so no gradcheck, and opcheck leaves out the AOT dispatch test, which would
    trace the data-dependent error check."""
    layouts = ["contiguous", "strided"]
    opcheck_layouts = ["strided"]
    opcheck_utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    test_gradcheck = None

    def test_matches_reference(self, device, dtype, layout):
        require_kernels(device)
        x = _logits(dtype, device, layout)
        edges = make_log10_edges(0.5, -8, 1.5).to(device)
        if device == "cuda" and dtype == torch.float64:  # no silent float computation
            with pytest.raises(RuntimeError, match="float64"):
                ops.entropy_histogram(x, edges)
            return
        ent, bins, counts = ops.entropy_histogram(x, edges)
        ref_ent, ref_bins, ref_counts = entropy_histogram_reference(x.double(), edges)
        assert ent.dtype == torch.float32 and bins.dtype == counts.dtype == torch.int64
        torch.testing.assert_close(ent.cpu().double(), ref_ent.cpu().double(), rtol=1e-4, atol=1e-7)
        near_edge = (torch.log10(ref_ent.cpu().double())[:, None] - edges.cpu()[None, :]).abs().min(1).values < 1e-4
        assert torch.equal(bins.cpu()[~near_edge], ref_bins.cpu()[~near_edge])
        assert torch.equal(counts.cpu(), torch.bincount(bins.cpu(), minlength=counts.numel()))

    def opcheck_calls(self, device, layout):
        return [(ops.entropy_histogram, (_logits(torch.float32, device, layout),
                                         make_log10_edges(0.5, -8, 1.5).to(device)))]


# ======================================================================================================
# build sources (fault 8 of issue 12: no dead globs, no dead helpers)
# ======================================================================================================
def test_every_source_glob_of_the_build_matches_files():
    setup_globs = re.findall(r'glob\.glob\(os\.path\.join\(([^)]*)\)\)', (REPO / "setup.py").read_text())
    assert setup_globs, "setup.py: no source globs found"
    for args in setup_globs:
        parts = [p.strip().strip('"') for p in args.split(",")]  # the variable csrc holds "csrc"
        assert glob.glob(str(REPO.joinpath(*parts))), f"setup.py glob {parts} matches no file"
    cmake_globs = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(csrc/\S*\*\.\w+)", (REPO / "CMakeLists.txt").read_text())
    assert cmake_globs, "CMakeLists.txt: no source globs found"
    for pattern in cmake_globs:
        assert glob.glob(str(REPO / pattern)), f"CMakeLists.txt glob {pattern} matches no file"
