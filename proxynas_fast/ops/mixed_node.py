"""Kernels of the fused DARTS mixed node (`proxynas_fast::channel_*`).

A node is sum_k a_k * normalize_k(z_k) over every candidate op k of every incoming edge; with the per-channel
normalisation folded into the weights that is `bias[c] + sum_k scale[k, c] * z_k`, computed in one pass
(`channel_weighted_sum`). The backward pass needs the per-channel sums of the gradient and of gradient * z_k
(`channel_dot_sums`) and then one elementwise pass per term (`channel_affine_combine`). `channel_moments` gives
the batch statistics. All terms have one shape [N, C, H, W]; they may be channel-block views of bigger tensors.
A BatchNorm followed by a ReLU is one term with the ReLU folded in: `relu=True` clamps the weighted sum at 0, and
`gate` ([2, C], the BatchNorm's per-channel scale and shift) makes the backward ops take the gradient through the
ReLU (`relu_gate_reference`): no ReLU pass, no pass or tensor for its gradient.
Tensors in channels_last ("rows" layout, `rows_layout`) are read in place by the CPU kernels, and an op whose
first term (or gradient) is in that layout returns its tensors in channels_last.

Each function uses the compiled kernel when there is one for the device, else the pure-PyTorch reference
(`*_reference`), which also defines the semantics for the tests. Statistics come back in float32 (float64 for
float64 inputs).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .. import extension

Tensor = torch.Tensor
_DIMS = (0, 2, 3)


def _stats_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_terms(op: str, terms: Sequence[Tensor], like: Tensor = None) -> None:
    """The reference path's argument check (the kernels make the same checks, as ValueError too: mixed_node.h)."""
    if like is None:
        if len(terms) == 0:
            raise ValueError(f"{op}: needs at least one term")
        like = terms[0]
    if like.dim() != 4:
        raise ValueError(f"{op}: tensors must be [N, C, H, W], got shape {tuple(like.shape)}")
    for k, t in enumerate(terms):  # the kernels' messages (mixed_node.h)
        if t.shape != like.shape:
            raise ValueError(f"{op}: term {k} has shape {list(t.shape)}, expected {list(like.shape)}")
        if t.dtype != like.dtype:
            raise ValueError(f"{op}: term {k} has dtype {t.dtype}, expected {like.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: term {k} is on {t.device}, expected {like.device}")


def rows_layout(t: Tensor) -> bool:
    """The kernels' "rows" layout (mixed_node.h): channels_last-contiguous and not also plane-contiguous. An op
    whose first term (or gradient) is in it returns its tensors in channels_last; the CPU kernels read it in
    place."""
    if t.dim() != 4 or not t.is_contiguous(memory_format=torch.channels_last):
        return False
    _, C, H, W = t.shape
    plane = t.stride(3) == 1 and (H == 1 or t.stride(2) == W) and (C == 1 or t.stride(1) == H * W)
    return not plane


def _in_layout_of(ref: Tensor, out: Tensor) -> Tensor:
    return out.contiguous(memory_format=torch.channels_last) if rows_layout(ref) else out


def _use_kernel(op: str, t: Tensor) -> bool:
    return extension.use_compiled(op, t.device)


# ----- references -----
def relu_gate_reference(grad: Tensor, z: Tensor, gate: Tensor) -> Tensor:
    """grad through the ReLU of gate[0] * z + gate[1] (per channel): 0 where that value, rounded to grad's dtype,
    is <= 0, grad elsewhere (NaN included), as aten's relu backward reads its output."""
    dt = _stats_dtype(grad)
    col = lambda v: v.to(dt).view(1, -1, 1, 1)  # noqa: E731
    pre = (col(gate[0]) * z.to(dt) + col(gate[1])).to(grad.dtype)
    return torch.where(pre <= 0, torch.zeros((), dtype=grad.dtype, device=grad.device), grad)


def _check_gate(op: str, gate: Tensor, terms: Sequence[Tensor], grad: Tensor) -> None:
    if not terms:
        raise ValueError(f"{op}: a gate needs a first term to gate the gradient by")
    C = grad.shape[1]
    if tuple(gate.shape) != (2, C):
        raise ValueError(f"{op}: gate must be [2, {C}], got {list(gate.shape)}")


def channel_moments_reference(terms: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    dt = _stats_dtype(terms[0])
    pairs = [torch.var_mean(t.to(dt), dim=_DIMS, unbiased=False) for t in terms]
    return torch.stack([m for _, m in pairs]), torch.stack([v for v, _ in pairs])


def channel_weighted_sum_reference(terms: Sequence[Tensor], scale: Tensor, bias: Tensor,
                                   relu: bool = False) -> Tensor:
    dt = _stats_dtype(terms[0])
    out = bias.to(dt).view(1, -1, 1, 1).expand(terms[0].shape).clone()
    for k, t in enumerate(terms):
        out.add_(t.to(dt) * scale[k].to(dt).view(1, -1, 1, 1))
    if relu:
        out = torch.relu(out)
    return _in_layout_of(terms[0], out.to(terms[0].dtype))


def channel_dot_sums_reference(grad: Tensor, terms: Sequence[Tensor],
                               gate: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    dt = _stats_dtype(grad)
    g = (grad if gate is None else relu_gate_reference(grad, terms[0], gate)).to(dt)
    sgz = [(g * t.to(dt)).sum(_DIMS) for t in terms]
    return g.sum(_DIMS), torch.stack(sgz) if sgz else g.new_zeros((0, g.shape[1]))


def channel_affine_combine_reference(grad: Tensor, terms: Sequence[Tensor], a: Tensor, b: Tensor,
                                     c: Tensor, gate: Optional[Tensor] = None) -> List[Tensor]:
    dt = _stats_dtype(grad)
    g = (grad if gate is None else relu_gate_reference(grad, terms[0], gate)).to(dt)
    col = lambda v: v.to(dt).view(1, -1, 1, 1)  # noqa: E731
    return [_in_layout_of(grad, (col(a[k]) * g + col(b[k]) * t.to(dt) + col(c[k])).to(grad.dtype))
            for k, t in enumerate(terms)]


# ----- public entry points -----
def channel_moments(terms: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of each term: two [K, C] tensors."""
    terms = list(terms)
    if terms and _use_kernel("channel_moments", terms[0]):
        return torch.ops.proxynas_fast.channel_moments(terms)
    _check_terms("channel_moments", terms)
    return channel_moments_reference(terms)


def channel_weighted_sum(terms: Sequence[Tensor], scale: Tensor, bias: Tensor, relu: bool = False) -> Tensor:
    """bias[c] + sum_k scale[k, c] * terms[k], in the terms' dtype (accumulated in float32/float64); with `relu`,
    clamped at 0."""
    terms = list(terms)
    if terms and _use_kernel("channel_weighted_sum", terms[0]):
        return torch.ops.proxynas_fast.channel_weighted_sum(terms, scale, bias, relu)
    _check_terms("channel_weighted_sum", terms)
    K, C = len(terms), terms[0].shape[1]
    if tuple(scale.shape) != (K, C) or tuple(bias.shape) != (C,):
        raise ValueError(f"channel_weighted_sum: scale must be [{K}, {C}] and bias [{C}], got "
                         f"{tuple(scale.shape)} and {tuple(bias.shape)}")
    return channel_weighted_sum_reference(terms, scale, bias, relu)


def channel_dot_sums(grad: Tensor, terms: Sequence[Tensor], gate: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(sum of grad per channel [C], sum of grad * terms[k] per channel [K, C]); with `gate`, of the gradient
    taken through the ReLU of gate[0] * terms[0] + gate[1] (`relu_gate_reference`)."""
    terms = list(terms)
    if _use_kernel("channel_dot_sums", grad):
        return torch.ops.proxynas_fast.channel_dot_sums(grad, terms, gate)
    _check_terms("channel_dot_sums", terms, grad)
    if gate is not None:
        _check_gate("channel_dot_sums", gate, terms, grad)
    return channel_dot_sums_reference(grad, terms, gate)


def channel_affine_combine(grad: Tensor, terms: Sequence[Tensor], a: Tensor, b: Tensor, c: Tensor,
                           gate: Optional[Tensor] = None) -> List[Tensor]:
    """[a[k, c] * grad + b[k, c] * terms[k] + c[k, c] for each k], in grad's dtype; with `gate`, grad taken
    through the ReLU of gate[0] * terms[0] + gate[1] (`relu_gate_reference`)."""
    terms = list(terms)
    if _use_kernel("channel_affine_combine", grad):
        return list(torch.ops.proxynas_fast.channel_affine_combine(grad, terms, a, b, c, gate))
    _check_terms("channel_affine_combine", terms, grad)
    if gate is not None:
        _check_gate("channel_affine_combine", gate, terms, grad)
    return channel_affine_combine_reference(grad, terms, a, b, c, gate)


# ----- instruction-set switch of the CPU kernels (tests, benchmarks; see csrc/ops/cpu/cpu_isa.h) -----
# It governs the mixed-node and pointwise-convolution kernels.
def cpu_isa_levels() -> List[str]:
    """The instruction-set levels the CPU kernels can run on this machine, baseline first and the best (the
    default) last; [] without the extension."""
    if not extension.has_cpu_kernels():
        return []
    return list(torch.ops.proxynas_fast._cpu_isa_levels())


def set_cpu_isa(isa: str) -> str:
    """Makes the CPU kernels run their `isa` clone ("baseline", "avx2", "avx512", or "auto" for the best the CPU
    has) from now on, in every thread; returns the previous level, to restore it. A level the CPU lacks raises.
    PROXYNAS_CPU_ISA sets the starting level the same way."""
    if not extension.has_cpu_kernels():
        raise RuntimeError("set_cpu_isa: the proxynas_fast extension is not built (no CPU kernels to switch)")
    return torch.ops.proxynas_fast._set_cpu_isa(isa)


if extension.has_cpu_kernels():

    @torch.library.register_fake("proxynas_fast::channel_moments")
    def _moments_fake(terms):
        t = terms[0]
        shape = (len(terms), t.shape[1])
        return t.new_empty(shape, dtype=_stats_dtype(t)), t.new_empty(shape, dtype=_stats_dtype(t))

    @torch.library.register_fake("proxynas_fast::channel_weighted_sum")
    def _weighted_sum_fake(terms, scale, bias, relu=False):
        return _in_layout_of(terms[0], torch.empty_like(terms[0], memory_format=torch.contiguous_format))

    @torch.library.register_fake("proxynas_fast::channel_dot_sums")
    def _dot_sums_fake(grad, terms, gate=None):
        dt = _stats_dtype(grad)
        return grad.new_empty((grad.shape[1],), dtype=dt), grad.new_empty((len(terms), grad.shape[1]), dtype=dt)

    @torch.library.register_fake("proxynas_fast::channel_affine_combine")
    def _affine_combine_fake(grad, terms, a, b, c, gate=None):
        return [_in_layout_of(grad, torch.empty_like(grad, memory_format=torch.contiguous_format)) for _ in terms]
