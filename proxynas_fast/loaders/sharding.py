"""Per-epoch example order shared by every loader: seeded, resumable, split evenly across DDP ranks.

The rules follow `torch.utils.data.DistributedSampler`: every rank draws the same permutation from
(seed, epoch); without drop_last the permutation is extended by wrapping around to a multiple of
world_size, with drop_last its tail is cut to one; rank r takes positions r, r + world_size, ...
So every rank gets the same number of examples (hence batches) and, without padding, no example is
seen by two ranks in one epoch.
"""
from __future__ import annotations

import numpy as np
import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, np.uint32)
    generator = torch.Generator(device="cpu")
    generator.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return generator


def derived_seed(*words: int) -> int:
    """A 31-bit seed (for libraries that take one) depending only on `words` (non-negative ints)."""
    state = np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]).generate_state(1, np.uint32)
    return int(state[0]) & 0x7FFFFFFF


def check_shard_args(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


def examples_per_rank(num_examples: int, world_size: int, drop_last: bool) -> int:
    if drop_last:
        return num_examples // world_size
    return -(-num_examples // world_size)


def num_batches(per_rank: int, batch_size: int, drop_last: bool) -> int:
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def global_epoch_order(
    num_examples: int, generator: torch.Generator, *, shuffle: bool, world_size: int, drop_last: bool
) -> torch.Tensor:
    """Positions 0..num_examples-1 in this epoch's order, padded (wrap-around) or truncated to
    `world_size * examples_per_rank`.  int64 CPU tensor."""
    if num_examples < 1:
        raise ValueError("cannot build an epoch over 0 examples")
    if shuffle:
        order = torch.randperm(num_examples, generator=generator)
    else:
        order = torch.arange(num_examples)
    total = world_size * examples_per_rank(num_examples, world_size, drop_last)
    if total > num_examples:
        order = order.repeat(-(-total // num_examples))
    return order[:total]


def take_rank(sequence, rank: int, world_size: int):
    """This rank's share of a global per-epoch sequence (tensor, array or list)."""
    return sequence[rank::world_size]
