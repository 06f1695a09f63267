"""The devices the kernel tests run on, and when a CUDA case may skip.

A CUDA case skips only where no CUDA device exists. Where one exists but the extension's CUDA kernels are
missing (a CPU-only build, a failed build), it fails: the GPU check must not report success over skipped tests.
`PROXYNAS_REQUIRE_CUDA=1` (set by benchmarks/gpu_check.sh on the GPU machine) makes a missing device fail too.
"""
from __future__ import annotations

import os

import pytest
import torch

from proxynas_fast import extension

DEVICES = ["cpu", "cuda"]


def require_kernels(device: str) -> None:
    """Skip, fail or return, for a test of the compiled kernels on `device` (see the module docstring)."""
    if device == "cuda" and not torch.cuda.is_available():
        if os.environ.get("PROXYNAS_REQUIRE_CUDA") == "1":
            pytest.fail("PROXYNAS_REQUIRE_CUDA=1 but torch sees no CUDA device")
        pytest.skip("needs a CUDA device")
    if not extension.has_kernels_for(device):
        pytest.fail(f"no compiled {device} kernels: {extension.import_error() or 'built without them'} "
                    "(build with FORCE_CUDA=1 for the CUDA kernels)")
