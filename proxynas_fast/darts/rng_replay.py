"""Consuming the global random number generator exactly as building a search network does, without building it.

The reference DARTS `Architect` calls `model.new()` on every unrolled (second-order) step. `new()` constructs a
whole network, and construction draws from the global RNG: PyTorch's default initialisation of every
convolution and linear layer (`kaiming_uniform_` of the weight, then `uniform_` of the bias if there is one;
BatchNorm initialises to constants and draws nothing), in construction order, then `1e-3 * torch.randn(shape)`
for each architecture tensor. Whatever the loop draws afterwards (the next batch's sampler permutation, the
DataLoader's base seed) therefore depends on those draws.

`replay_construction_draws` repeats the same calls on scratch tensors of the same shapes, in the same order, on
the default device and in the default dtype (where construction draws): the generator ends in the same state
(checked against real construction by the tests), for the cost of the draws alone.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn

# Modules whose default initialisation draws: weight (and bias when present) uniformly.
_UNIFORM_INIT = (nn.modules.conv._ConvNd, nn.Linear)
# Modules whose default initialisation is constant (no draws).
_CONSTANT_INIT = (nn.modules.batchnorm._NormBase,)


def construction_draws(modules: Iterable[nn.Module]) -> list:
    """Shapes of the tensors that default initialisation fills with `uniform_`, in draw order.

    `modules` must be in construction order (`model.modules()` of the search networks is). Raises ValueError
    for a module with its own parameters whose initialisation is not known here, rather than guess.
    """
    shapes = []
    for module in modules:
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, _UNIFORM_INIT):
            shapes.append(tuple(module.weight.shape))
            if module.bias is not None:
                shapes.append(tuple(module.bias.shape))
        elif not isinstance(module, _CONSTANT_INIT):
            raise ValueError(f"cannot replay the initialisation draws of {type(module).__name__}")
    return shapes


def replay_construction_draws(uniform_shapes: Sequence[tuple], randn_shapes: Sequence[tuple]) -> None:
    """Advance the global RNG as `uniform_` on each of `uniform_shapes` then `torch.randn` of each of
    `randn_shapes` would (default device and dtype, like construction)."""
    with torch.no_grad():
        for shape in uniform_shapes:
            if 0 not in shape:  # nn.init skips empty tensors
                torch.empty(shape).uniform_()
        for shape in randn_shapes:
            torch.randn(shape)
