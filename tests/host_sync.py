"""Finds host-device synchronisations and transfers in code that runs on (fake) CUDA tensors, without a GPU.

`HostSyncRecorder` is a TorchDispatchMode: it sees every ATen op and fails at the first one that would make the
host wait for the GPU or copy host memory to the device:

* reading a device value on the host (`.item()`, `bool(t)`, `float(t)`: `aten._local_scalar_dense`, and ops
  built on it such as `aten.equal`, `aten.is_nonzero`);
* ops whose output shape depends on the data (`nonzero`, `masked_select`, `unique`, ...), which must copy a
  count back to the host;
* a copy between the CPU and a CUDA device (`aten._to_copy`, `aten.copy_`), and any op that mixes CUDA tensors
  with a CPU tensor that is not a 0-dim scalar (for example indexing a CUDA tensor with a Python list: the list
  becomes a CPU index tensor that the op copies to the device).

Under `FakeTensorMode` (CUDA build of torch, no GPU needed) a search network's forward runs on fake CUDA tensors.
The autograd engine cannot run there (it queries the CUDA driver), so `backward_without_engine` walks the graph
itself, calling every backward node in the engine's order; `patched_autograd` routes `torch.autograd.grad` and
`Tensor.backward` to it, so unmodified training code (a whole search step) runs forward and backward on fake CUDA
tensors.
"""
from __future__ import annotations

import contextlib
import heapq
import traceback
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

Tensor = torch.Tensor
aten = torch.ops.aten

# Ops that read a device value on the host, or whose output size depends on the data (op overload packets).
SYNCING_OPS = frozenset({
    aten._local_scalar_dense, aten.equal, aten.is_nonzero, aten.allclose, aten.nonzero, aten.masked_select,
    aten.unique_consecutive, aten._unique, aten._unique2, aten.unique_dim, aten.bincount, aten.repeat_interleave,
    aten.argwhere, aten.item,
})
_SKIPPED_DIRS = (str(Path(torch.__file__).resolve().parent), str(Path(contextlib.__file__).resolve().parent))


class HostSyncError(AssertionError):
    """An op would synchronise the host with the GPU, or copy host memory to it."""


def _where() -> str:
    """The innermost frame of the caller's code (not torch, the standard library or this file) that issued the
    op."""
    for frame in reversed(traceback.extract_stack()):
        path = str(Path(frame.filename).resolve())
        if path != str(Path(__file__).resolve()) and not path.startswith(_SKIPPED_DIRS):
            return f"{frame.filename}:{frame.lineno} ({frame.name}: {frame.line})"
    return "unknown"


def sync_reason(func, args, kwargs) -> Optional[str]:
    """Why `func(*args, **kwargs)` would sync or transfer between host and device, or None."""
    packet = func.overloadpacket
    if packet in SYNCING_OPS:
        return "reads a device value on the host, or its output shape depends on the data"
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
    devices = {t.device.type for t in tensors}
    if packet is aten._to_copy and tensors:
        target = kwargs.get("device")
        if target is not None and torch.device(target).type != tensors[0].device.type:
            return f"copies {tensors[0].device.type} -> {torch.device(target).type}"
    if packet is aten.copy_ and len(tensors) >= 2 and tensors[0].device.type != tensors[1].device.type:
        return f"copies {tensors[1].device.type} -> {tensors[0].device.type}"
    if "cuda" in devices and any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
        shapes = [tuple(t.shape) for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        return f"takes CPU tensors {shapes} with CUDA tensors (a host-to-device copy)"
    return None


class HostSyncRecorder(TorchDispatchMode):
    """Records every op (`ops`) and raises `HostSyncError` at the first that would sync or transfer (`raise_now`
    False: collect them all in `findings` instead)."""

    def __init__(self, raise_now: bool = True):
        super().__init__()
        self.ops: List[str] = []
        self.findings: List[str] = []
        self.raise_now = raise_now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(str(func))
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            finding = f"{func}: {reason}, at {_where()}"
            self.findings.append(finding)
            if self.raise_now:
                raise HostSyncError(finding)
        return func(*args, **kwargs)


# ----- backward without the autograd engine -----
def _graph_nodes(roots) -> Dict[object, int]:
    """Every node reachable from `roots`, with the number of edges that point at it."""
    deps: Dict[object, int] = {}
    stack = list(roots)
    seen = set(stack)
    while stack:
        fn = stack.pop()
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            deps[nxt] = deps.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return deps


# Python autograd.Function nodes return one gradient per forward argument, tensors or not; the graph's edges
# exist for the tensor arguments only. `patched_autograd` records which arguments were tensors, per node.
_tensor_args: Dict[object, List[bool]] = {}


def _call_node(fn, grads: List[Optional[Tensor]]):
    if hasattr(fn, "_forward_cls"):  # a Python autograd.Function: materialise missing gradients as zeros
        meta = fn._input_metadata
        grads = [g if g is not None else torch.zeros(m.shape, dtype=m.dtype, device=m.device)
                 for g, m in zip(grads, meta)]
        out = fn.apply(*grads)
        out = out if isinstance(out, tuple) else (out,)
        mask = _tensor_args.get(fn)
        if mask is None:
            raise RuntimeError(f"backward_without_engine: {fn.name()} was created outside patched_autograd()")
        return tuple(g for g, is_tensor in zip(out, mask) if is_tensor)
    out = fn(*grads)
    return out if isinstance(out, tuple) else (out,)


def backward_without_engine(outputs: Sequence[Tensor], grad_outputs: Sequence[Optional[Tensor]],
                            inputs: Optional[Sequence[Tensor]] = None) -> Optional[List[Optional[Tensor]]]:
    """`torch.autograd.grad(outputs, inputs, grad_outputs)` (inputs given: leaves only) or
    `torch.autograd.backward(outputs, grad_outputs)` (accumulates into the leaves' .grad), evaluated by calling
    the graph's backward nodes directly, in the engine's order (a node runs once every node that feeds it has run;
    among ready nodes the most recently created first)."""
    roots, root_grads = [], []
    for out, g in zip(outputs, grad_outputs):
        if out.grad_fn is None:
            raise RuntimeError("backward_without_engine: an output does not require grad")
        roots.append((out.grad_fn, out.output_nr if hasattr(out, "output_nr") else 0))
        root_grads.append(torch.ones_like(out) if g is None else g)
    deps = _graph_nodes([fn for fn, _ in roots])
    wanted = None
    if inputs is not None:
        wanted = {}
        for i, t in enumerate(inputs):
            if t.grad_fn is not None:
                raise NotImplementedError("backward_without_engine: gradients with respect to non-leaf tensors")
            wanted[id(t)] = i
    buffers: Dict[object, List[Optional[Tensor]]] = {}

    def deposit(fn, nr: int, g: Tensor) -> None:
        meta = fn._input_metadata
        if nr < len(meta):  # as the engine's validate_outputs: reduce a broadcast gradient, cast to the dtype
            if tuple(g.shape) != tuple(meta[nr].shape):
                g = g.sum_to_size(meta[nr].shape)
            if g.dtype != meta[nr].dtype:
                g = g.to(meta[nr].dtype)
        buf = buffers.setdefault(fn, [None] * max(len(meta), nr + 1))
        buf[nr] = g if buf[nr] is None else buf[nr] + g

    for (fn, nr), g in zip(roots, root_grads):
        deposit(fn, nr, g)
    results: List[Optional[Tensor]] = [None] * (len(inputs) if inputs is not None else 0)
    remaining = dict(deps)
    ready = [(-fn._sequence_nr(), id(fn), fn) for fn, _ in roots if remaining.get(fn, 0) == 0]
    heapq.heapify(ready)
    done = set()
    while ready:
        _, _, fn = heapq.heappop(ready)
        if fn in done:
            continue
        done.add(fn)
        grads = buffers.pop(fn, [])
        if type(fn).__name__ == "AccumulateGrad":
            var, g = fn.variable, (grads[0] if grads else None)
            if g is not None:
                if wanted is not None:
                    if id(var) in wanted:
                        results[wanted[id(var)]] = g
                elif var.grad is None:
                    var.grad = g.detach()
                else:
                    var.grad = var.grad + g.detach()
        elif any(g is not None for g in grads):
            outs = _call_node(fn, grads)
            for (nxt, nr), g in zip(fn.next_functions, outs):
                if nxt is not None and g is not None:
                    deposit(nxt, nr, g)
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            remaining[nxt] -= 1
            if remaining[nxt] == 0:
                heapq.heappush(ready, (-nxt._sequence_nr(), id(nxt), nxt))
    return results if inputs is not None else None


@contextlib.contextmanager
def patched_autograd() -> Iterator[None]:
    """Route `torch.autograd.grad` and `Tensor.backward` through `backward_without_engine`."""
    original_grad, original_backward = torch.autograd.grad, Tensor.backward
    original_apply = torch.autograd.Function.__dict__["apply"]

    def apply(cls, *args, **kwargs):
        out = original_apply.__get__(None, cls)(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.grad_fn is not None and getattr(t.grad_fn, "_forward_cls", None) is cls:
                _tensor_args[t.grad_fn] = [isinstance(a, Tensor) for a in args]
        return out

    def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=None,
             **_):
        outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        if grad_outputs is None:
            grad_outputs = [None] * len(outputs)
        elif isinstance(grad_outputs, Tensor):
            grad_outputs = [grad_outputs]
        if create_graph:
            raise NotImplementedError("backward_without_engine: create_graph")
        result = backward_without_engine(outputs, grad_outputs, inputs)
        if not allow_unused and any(r is None for r in result):
            raise RuntimeError("backward_without_engine: an input was not used in the graph")
        return tuple(result)

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        if inputs is not None or create_graph:
            raise NotImplementedError("backward_without_engine: Tensor.backward(inputs=...) / create_graph")
        backward_without_engine([self], [gradient])

    torch.autograd.grad = grad
    Tensor.backward = backward
    torch.autograd.Function.apply = classmethod(apply)
    try:
        yield
    finally:
        torch.autograd.grad = original_grad
        Tensor.backward = original_backward
        torch.autograd.Function.apply = original_apply
        _tensor_args.clear()
