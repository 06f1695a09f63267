"""Without compiled kernels every op falls back to its pure-PyTorch reference the same way
(`extension.use_compiled`), with one warning per device type for the whole process, as README and
docs/ARCHITECTURE.md say; on a device type an op has no kernel for (the CPU-only ops on a GPU) the reference is
the op's path and nothing is said."""
from __future__ import annotations

import warnings

import pytest
import torch

from proxynas_fast import extension
from proxynas_fast.ops import dw_conv2d, entropy_histogram, pool2d, pw_conv2d
from proxynas_fast.ops.mixed_node import channel_moments


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(extension, "has_kernels_for", lambda device: False)
    monkeypatch.setattr(extension, "_warned", set())


def _call_every_op():
    x = torch.randn(2, 4, 6, 6)
    return [dw_conv2d(x, torch.randn(4, 1, 3, 3), 1, 1, 1), pw_conv2d(x, torch.randn(1, 3, 4)),
            pool2d(x, True, 3, 1, 1), channel_moments([x])[0],
            entropy_histogram(torch.randn(5, 10), torch.linspace(-3, 1, 6, dtype=torch.float64))]


def test_every_op_falls_back_with_one_warning(no_kernels):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _call_every_op()
        _call_every_op()
    fallback = [w for w in caught if "pure-PyTorch reference" in str(w.message)]
    assert len(fallback) == 1 and issubclass(fallback[0].category, RuntimeWarning)
    assert "no compiled cpu kernels (first needed by dw_conv2d)" in str(fallback[0].message)


def test_the_rule_per_device_type(no_kernels):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not extension.use_compiled("pool2d", torch.device("cuda"), cuda_kernel=False)  # not a fallback
        assert not extension.use_compiled("pool2d", torch.device("meta"))
        assert caught == []
        assert not extension.use_compiled("dw_conv2d", torch.device("cuda"))  # a CUDA kernel exists: missing
        assert not extension.use_compiled("pw_conv2d", torch.device("cpu"), cuda_kernel=False)
    assert [str(w.message).split(" (")[0] for w in caught] == ["proxynas_fast: no compiled cuda kernels",
                                                              "proxynas_fast: no compiled cpu kernels"]
