"""The devices tests run on, and the one way a test says it needs CUDA.

* `needs_cuda`: decorator for a test that needs a CUDA device (marks it `cuda`; skips without one);
* `cpu_and_cuda`: parametrises a test's `device` over "cpu" and "cuda" (the "cuda" case as `needs_cuda`);
* `require_kernels(device)`: first line of a test of the compiled kernels (tests/op_tester.py and the fused
  cell's kernel tests), which fails where a CUDA device exists but its kernels do not.

A CUDA case skips only where no CUDA device exists. Where one exists but the extension's CUDA kernels are
missing (a CPU-only build, a failed build), it fails: the GPU check must not report success over skipped tests.
`PROXYNAS_REQUIRE_CUDA=1` (set by benchmarks/gpu_check.sh on the GPU machine) makes a missing device fail too.
"""
from __future__ import annotations

import os

import pytest
import torch

from proxynas_fast import extension

_NO_CUDA = not torch.cuda.is_available() and os.environ.get("PROXYNAS_REQUIRE_CUDA") != "1"
# "cuda" carries the `cuda` marker (`-m cuda` selects the CUDA cases) and skips where no CUDA device exists.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")])]


def needs_cuda(test):
    """Mark `test` as a CUDA test (`-m cuda` selects them) that skips where no CUDA device exists (it runs, and
    fails, under PROXYNAS_REQUIRE_CUDA=1)."""
    return pytest.mark.cuda(pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")(test))


cpu_and_cuda = pytest.mark.parametrize("device", DEVICES)


def require_kernels(device: str) -> None:
    """Skip, fail or return, for a test of the compiled kernels on `device` (see the module docstring)."""
    if device == "cuda" and not torch.cuda.is_available():
        if os.environ.get("PROXYNAS_REQUIRE_CUDA") == "1":
            pytest.fail("PROXYNAS_REQUIRE_CUDA=1 but torch sees no CUDA device")
        pytest.skip("needs a CUDA device")
    if not extension.has_kernels_for(device):
        pytest.fail(f"no compiled {device} kernels: {extension.import_error() or 'built without them'} "
                    "(build with FORCE_CUDA=1 for the CUDA kernels)")
