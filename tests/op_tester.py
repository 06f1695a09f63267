"""`OpTester`: what every custom op's tests share, written once (as torchvision's test/test_ops.py does).

A tester is a test class. The base carries the devices, dtypes and memory layouts each op runs over, the inputs
in those layouts (`make_tensor`), the tolerances against a float64 reference, and three tests:

* `test_matches_reference`: the kernel's forward (and backward, where the op has one) against the op's
  pure-PyTorch reference computed in float64 on the same rounded inputs, with the output's dtype and layout;
* `test_gradcheck`: torch.autograd.gradcheck of the differentiable wrapper in float64;
* `test_opcheck`: torch.library.opcheck (schema, fake kernel = the real op's shapes, dtypes and strides,
  autograd registration, AOT dispatch) of every op call the tester names.

A subclass says only what differs: `devices` / `dtypes` / `layouts` / `cases`, and `sample`, `forward`,
`reference`, `backward`, `gradcheck_call` and `opcheck_calls`; tests of its own behaviour are methods beside them.
Each test method's `device`, `dtype`, `layout` and `case` arguments are parametrised from the class
(`pytest_generate_tests`); every test first checks that the compiled kernels exist for its device
(`devices.require_kernels`: a CUDA case skips only where no CUDA device exists).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch._prims_common import suggest_memory_format

from devices import DEVICES, require_kernels

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "channels_last", "block", "strided"]
# Tolerances against the float64 reference: reduced precision is rounded once at the end, float32 accumulates.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2), torch.float16: dict(rtol=2e-3, atol=2e-3)}
HALF = (torch.bfloat16, torch.float16)


def make_tensor(shape, dtype, device, layout, scale=1.0, seed=0):
    """A [N, C, H, W] tensor in the given layout (values drawn in float64, then rounded to dtype): contiguous,
    channels_last, a channel block of a bigger tensor (what the fused cell passes) or a strided slice (every
    second column)."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    base_shape = {"block": (N, 3 * C, H, W), "strided": (N, C, H, 2 * W)}.get(layout, shape)
    t = (torch.randn(base_shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    if layout == "block":  # channels C..2C-1 of a [N, 3C, H, W] tensor: contiguous planes, batch stride 3*C*H*W
        t = t[:, C:2 * C]
    elif layout == "strided":  # every second column: no unit stride at all
        t = t[..., ::2]
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    assert (layout == "contiguous") == t.is_contiguous()
    return t


def kernel_layout_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format the kernels return for an input `t` (see ops/_layout.py)."""
    return suggest_memory_format(t)


def assert_close_to_f64(got, want64, dtype, **tolerance):
    torch.testing.assert_close(got.double(), want64.to(got.device), **(tolerance or TOL[dtype]))


def widened(tol: dict, factor: float = 10) -> dict:
    """`tol` with its absolute part scaled: for sums of many reduced-precision products."""
    return dict(rtol=tol["rtol"], atol=tol["atol"] * factor)


def _id(value) -> str:
    value = value.values[0] if hasattr(value, "values") else value  # a pytest.param
    return str(value).replace("torch.", "")


class OpTester:
    devices: Sequence[str] = DEVICES
    dtypes: Sequence[torch.dtype] = FLOATS
    layouts: Sequence[str] = LAYOUTS
    cases: Dict[str, object] = {"default": None}
    opcheck_layouts: Optional[Sequence[str]] = None  # default: `layouts`

    # ---- what a subclass says ---------------------------------------------------------------------------------
    def sample(self, case, dtype, device, layout) -> Tuple[torch.Tensor, ...]:
        """The op's tensor inputs for one case."""
        raise NotImplementedError

    def forward(self, inputs, case):
        """The compiled op's forward (`torch.ops.proxynas_fast.*`) on `inputs`."""
        raise NotImplementedError

    def reference(self, inputs, case):
        """The op's pure-PyTorch reference on float64 `inputs` (differentiable)."""
        raise NotImplementedError

    def backward(self, grad, inputs, out, case) -> Optional[Sequence[torch.Tensor]]:
        """The compiled backward's gradients of `differentiable` inputs; None: the op has no backward."""
        return None

    differentiable: Sequence[int] = (0,)  # which inputs `backward` returns gradients for

    def tolerances(self, dtype) -> Tuple[dict, List[dict]]:
        """(forward tolerance, one per gradient)."""
        return TOL[dtype], [TOL[dtype]] * len(self.differentiable)

    def gradcheck_call(self, device) -> Tuple[Callable, Tuple[torch.Tensor, ...]]:
        """(differentiable wrapper, float64 inputs requiring grad) for gradcheck."""
        raise NotImplementedError

    def opcheck_calls(self, device, layout) -> List[Tuple[object, tuple]]:
        """(op, args) pairs for torch.library.opcheck, float32 inputs in `layout`."""
        return []

    opcheck_utils: Optional[Tuple[str, ...]] = None  # torch.library.opcheck's test_utils; None: all of them

    # ---- parametrisation ----------------------------------------------------------------------------------------
    @classmethod
    def pytest_generate_tests(cls, metafunc):
        layouts = cls.opcheck_layouts if metafunc.function.__name__ == "test_opcheck" and cls.opcheck_layouts \
            else cls.layouts
        own = {name.strip() for mark in metafunc.definition.iter_markers("parametrize")
               for name in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
        for name, values in (("device", cls.devices), ("dtype", cls.dtypes), ("layout", layouts),
                             ("case", list(cls.cases))):
            if name in metafunc.fixturenames and name not in own:  # a test's own parametrize mark wins
                metafunc.parametrize(name, values, ids=[_id(v) for v in values])

    # ---- the shared tests ---------------------------------------------------------------------------------------
    def test_matches_reference(self, device, dtype, layout, case):
        require_kernels(device)
        inputs = self.sample(case, dtype, device, layout)
        out = self.forward(inputs, case)
        assert out.dtype == dtype and out.is_contiguous(memory_format=kernel_layout_of(inputs[0]))
        inputs64 = [t.double().requires_grad_(i in self.differentiable) for i, t in enumerate(inputs)]
        ref = self.reference(inputs64, case)
        forward_tol, grad_tols = self.tolerances(dtype)
        assert_close_to_f64(out, ref, dtype, **forward_tol)
        g = make_tensor(tuple(ref.shape), dtype, device, "contiguous", seed=2)
        grads = self.backward(g, inputs, out, case)
        if grads is None:
            return
        want = torch.autograd.grad(ref, [inputs64[i] for i in self.differentiable], g.double())
        assert grads[0].dtype == dtype and grads[0].is_contiguous(memory_format=kernel_layout_of(inputs[0]))
        for got, w, tol in zip(grads, want, grad_tols):
            assert_close_to_f64(got, w, dtype, **tol)

    def test_gradcheck(self, device):  # a tester of an op without autograd sets `test_gradcheck = None`
        require_kernels(device)
        fn, inputs = self.gradcheck_call(device)
        assert torch.autograd.gradcheck(fn, inputs)

    def test_opcheck(self, device, layout):
        require_kernels(device)
        calls = self.opcheck_calls(device, layout)
        assert calls, f"{type(self).__name__} names no op to check"
        for op, args in calls:
            if self.opcheck_utils is None:
                torch.library.opcheck(op, args)
            else:
                torch.library.opcheck(op, args, test_utils=self.opcheck_utils)
