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


class ShardedEpochs:
    """The epoch bookkeeping every loader shares: this epoch's seeded order over all ranks, this rank's share
    of it, `len` (batches per epoch on this rank), `set_epoch` and a resumable `state_dict`.

    A loader calls `_init_epochs` in its constructor and provides `num_examples` (an attribute or a property:
    the examples of one epoch over all ranks, before padding); `STATE_SIZE_KEY` names that count in the
    state dict, which a resumed run checks so that it reproduces the saved order.
    """

    STATE_SIZE_KEY = "num_examples"
    num_examples: int

    def _init_epochs(self, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int, rank: int,
                     world_size: int) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_shard_args(rank, world_size)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    @property
    def examples_per_rank(self) -> int:
        return examples_per_rank(self.num_examples, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return num_batches(self.examples_per_rank, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "world_size": self.world_size,
                self.STATE_SIZE_KEY: self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        del mine["epoch"]
        for key, value in mine.items():
            if key in state and int(state[key]) != value:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {key}={value}: "
                                 "the resumed run would not reproduce the saved order")
        self.set_epoch(int(state["epoch"]))

    def epoch_order_and_generator(self, epoch: int | None = None) -> tuple[torch.Tensor, torch.Generator]:
        """This epoch's order over all ranks (`global_epoch_order`) and the (seed, epoch) generator it was drawn
        from, left where the order ends so that a loader can draw the epoch's augmentation from it."""
        generator = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        order = global_epoch_order(self.num_examples, generator, shuffle=self.shuffle,
                                   world_size=self.world_size, drop_last=self.drop_last)
        return order, generator

    def global_order(self, epoch: int | None = None) -> torch.Tensor:
        """Positions 0..num_examples-1 of one epoch (default: the current one) over all ranks, padded or
        truncated to the world size."""
        return self.epoch_order_and_generator(epoch)[0]

    def rank_share(self, sequence):
        """This rank's share of a global per-epoch sequence (`take_rank`)."""
        return take_rank(sequence, self.rank, self.world_size)
