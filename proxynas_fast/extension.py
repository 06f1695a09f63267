"""Finds the native extension `proxynas_fast._C` and says which kernels it provides.

Every op in `proxynas_fast.ops` has a pure-PyTorch reference; when the extension (or its CUDA part)
is missing, the op wrappers fall back to it and warn once.
"""
from __future__ import annotations

import warnings

import torch

_C = None
_IMPORT_ERROR: Exception | None = None
try:  # importing the module runs the TORCH_LIBRARY registrations of every op
    from proxynas_fast import _C  # type: ignore[attr-defined]
except Exception as e:  # noqa: BLE001 - any load failure means "no extension"
    _IMPORT_ERROR = e

_warned: set = set()


def has_cpu_kernels() -> bool:
    """True when the compiled extension is importable (it always contains the CPU kernels)."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels and a CUDA device is usable."""
    return _C is not None and bool(_C.built_with_cuda()) and torch.cuda.is_available()


def built_with_cuda() -> bool:
    """True when the CUDA kernels were compiled in (whether or not a GPU is present)."""
    return _C is not None and bool(_C.built_with_cuda())


def has_kernels_for(device: torch.device | str) -> bool:
    """Whether the compiled kernels run on `device` (every op wrapper asks, thousands of times a search step: the
    CPU answer is one call of `has_cpu_kernels`, the single rule that tests and callers may replace)."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if kind == "cpu":
        return has_cpu_kernels()
    if kind == "cuda":
        return has_cuda_kernels()
    return False


def import_error() -> Exception | None:
    """Why the extension could not be loaded (None when it was)."""
    return _IMPORT_ERROR


def warn_fallback(op_name: str, device: torch.device | str) -> None:
    """Warn once per (op, device type) that the pure-PyTorch reference is used instead of a kernel."""
    key = (op_name, torch.device(device).type)
    if key in _warned:
        return
    _warned.add(key)
    why = f" ({_IMPORT_ERROR})" if _IMPORT_ERROR is not None else ""
    warnings.warn(
        f"proxynas_fast: no compiled {key[1]} kernel for {op_name}{why}; using the pure-PyTorch reference. "
        "Build the extension with `pip install --no-build-isolation -e .` for the fast path.",
        RuntimeWarning,
        stacklevel=3,
    )
