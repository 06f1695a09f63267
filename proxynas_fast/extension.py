"""Finds the native extension `proxynas_fast._C` and says which kernels it provides.

Every op in `proxynas_fast.ops` has a pure-PyTorch reference; when the extension (or its CUDA part)
is missing, the op wrappers fall back to it, all the same way (`use_compiled`), with one warning per device type
for the whole process.
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

_warned: set = set()  # device types already warned about


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


def use_compiled(op_name: str, device: torch.device, cuda_kernel: bool = True) -> bool:
    """Whether an op wrapper runs `op_name`'s compiled kernel on `device` (the one rule every op follows). Where
    the op has a kernel for the device type (CPU always; CUDA when `cuda_kernel`) but the extension or its CUDA
    part is missing, it warns (`warn_fallback`) and the wrapper runs the reference. A device type the op has no
    kernel for (the CPU-only ops on a GPU, where PyTorch's own ops are the fast path) gets no warning."""
    kind = device.type
    if kind != "cpu" and not (kind == "cuda" and cuda_kernel):
        return False
    if has_kernels_for(device):
        return True
    warn_fallback(op_name, device)
    return False


def warn_fallback(op_name: str, device: torch.device | str) -> None:
    """Warn, once per device type for the whole process, that the ops use their pure-PyTorch references instead
    of compiled kernels (`op_name`: the first op that did)."""
    kind = torch.device(device).type
    if kind in _warned:
        return
    _warned.add(kind)
    why = f" ({_IMPORT_ERROR})" if _IMPORT_ERROR is not None else ""
    warnings.warn(
        f"proxynas_fast: no compiled {kind} kernels (first needed by {op_name}){why}; every op uses its "
        "pure-PyTorch reference. Build the extension with `pip install --no-build-isolation -e .` for the fast path.",
        RuntimeWarning,
        stacklevel=3,
    )
