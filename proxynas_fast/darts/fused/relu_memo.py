"""One ReLU per tensor within a network's forward (`shared_relus` / `shared_relu`), and the stems' runner.

A cell's output is read by the preprocessings of the next two cells, and each starts with a ReLU; inside
`shared_relus` that ReLU is computed once. `run_sequential` runs a stem (an nn.Sequential) with its BatchNorms on
the kernels and its ReLUs through the memo.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_mod

from .kernel_batch_norm import batch_norm

Tensor = torch.Tensor


_RELU_MEMO: contextvars.ContextVar[Optional[Dict[int, Tuple[Tensor, int, bool, Tensor]]]] = \
    contextvars.ContextVar("proxynas_fast_relu_memo", default=None)


@contextlib.contextmanager
def shared_relus() -> Iterator[None]:
    """Within it, `shared_relu(x)` computes relu(x) once per tensor: a cell's output is read by the next two
    cells' preprocessings, and each starts with a ReLU (the ImageNet stem0's output also by stem1's ReLU). One
    ReLU, one tensor kept for backward and one gradient pass instead of two. The network's forward opens it
    (`Network.forward`, fused backend); it holds its tensors until it closes."""
    token = _RELU_MEMO.set({})
    try:
        yield
    finally:
        _RELU_MEMO.reset(token)


def shared_relu(x: Tensor) -> Tensor:
    """relu(x), computed once per tensor x inside `shared_relus` (again if x was changed in place since, or the
    grad mode differs), else every call."""
    memo = _RELU_MEMO.get()
    if memo is None or x.is_inference():  # inference tensors have no version counter
        return F.relu(x)
    grad_mode = torch.is_grad_enabled()
    hit = memo.get(id(x))
    if hit is not None and hit[0] is x and hit[1] == x._version and hit[2] == grad_mode:
        return hit[3]
    r = F.relu(x)
    memo[id(x)] = (x, x._version, grad_mode, r)  # x kept: its id is not reused while the memo lives
    return r


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(modules: Sequence[nn.Module]) -> bool:
    """Whether calling these modules would run a hook (theirs or a global one)."""
    if any(getattr(_module_mod, "_global" + name, None) for name in _HOOK_DICTS):
        return True
    return any(getattr(m, name, None) for m in modules for name in _HOOK_DICTS)


def run_sequential(seq: nn.Sequential, x: Tensor) -> Tensor:
    """`seq(x)` with its BatchNorm2d modules run by `batch_norm`, a ReLU right after one folded into it, any other
    out-of-place ReLU by `shared_relu` (the fused backend's stems). With a hook on the Sequential or a child (or a
    global module hook), `seq(x)` itself, so that every hook runs as it would."""
    modules = list(seq)
    if _hooked([seq, *modules]):
        return seq(x)
    i = 0
    while i < len(modules):
        module = modules[i]
        if type(module) is nn.BatchNorm2d:
            relu = i + 1 < len(modules) and type(modules[i + 1]) is nn.ReLU
            x = batch_norm(x, module, relu)
            i += 2 if relu else 1
        elif type(module) is nn.ReLU and not module.inplace:
            x = shared_relu(x)
            i += 1
        else:
            x = module(x)
            i += 1
    return x
