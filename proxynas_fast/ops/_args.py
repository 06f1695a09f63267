"""Argument and backward helpers shared by the operator wrappers (and the fused cell's autograd functions)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]


def int_pair(op: str, name: str, v: IntPair) -> Tuple[int, int]:
    """An int or 2 ints as a (height, width) pair; a clear error naming the op and the argument otherwise."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"{op}: {name} must be an int or 2 ints, got {v}")
    return v


def inputs_needing_grad(ctx, start: int = 0, stop: Optional[int] = None) -> List[bool]:
    """For a custom autograd function's backward: per tensor input in [start, stop), whether this backward pass
    uses its gradient (the function's tensor arguments must come first: `next_functions` lists only those).
    `ctx.needs_input_grad` only says that an input requires grad; `torch.autograd.grad(loss, inputs)` runs just
    the graph leading to `inputs` (the DARTS architecture step needs no weight gradients), and the engine knows
    which of this node's inputs lead there. A leaf's gradient is taken as used (the engine cannot tell during
    `autograd.grad`)."""
    flags = ctx.needs_input_grad[start:stop]
    return [needed and _engine_uses(node) for needed, (node, _) in zip(flags, ctx.next_functions[start:stop])]


def _engine_uses(node) -> bool:
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    if will_run is None or node is None or node.name().endswith("AccumulateGrad"):
        return node is not None
    try:
        return will_run(node)
    except RuntimeError:  # a node the engine will not answer for (e.g. under AOT tracing): assume it is used
        return True
