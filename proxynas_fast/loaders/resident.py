"""A loader that keeps a whole small-image (proxy) set on the device and augments batches there.

CIFAR/SVHN proxies are tiny (5,000 x 32 x 32 x 3 bytes = 15 MB for a 10 % CIFAR-10 proxy), so decoding
them once and keeping them as uint8 on the GPU removes the per-epoch cost of a worker-based
DataLoader (per-item Python, per-item transforms, inter-process copies).

Storage: the images are converted once to NCHW uint8.  In train mode they are stored already
zero-padded by `pad` pixels on each side ([N, C, H + 2p, W + 2p], 1.56x the bytes for 32x32 with
pad=4) so that a random crop is a pure gather.  In eval mode (train=False) there is no crop, flip or
cutout and the images are stored unpadded.

Randomness: for each epoch a CPU generator seeded by (seed, epoch) draws the permutation and then
every sample's crop offsets, flip and cutout centre (`epoch_plan`); the plan is copied to the device
once per epoch.  The batches therefore depend only on (seed, epoch, rank, world_size), are the same
on CPU and CUDA, and a resumed run reproduces them (`state_dict` / `load_state_dict`).  As with
`DistributedSampler`, call `set_epoch(e)` before each epoch; the epoch does not advance by itself.

On a CPU the per-batch ops are small (a 64-image CIFAR batch is 0.2 M elements): on a busy machine
one intra-op thread (`torch.set_num_threads(1)`) can build batches several times faster than two.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from proxynas_fast.loaders.augment import (
    AugmentParams,
    apply_cutout_,
    crop_and_flip,
    draw_augment_params,
    normalization_constants,
    normalize,
)
from proxynas_fast.loaders.sharding import ShardedEpochs


@dataclass
class EpochPlan:
    """What one rank reads in one epoch: `order[k]` is the resident position of the k-th sample
    (`example_index[k]` its index in the full dataset) and `params` its augmentation draws."""

    order: torch.Tensor
    example_index: torch.Tensor
    params: AugmentParams


class ResidentLoader(ShardedEpochs):
    """Iterates (x, y) batches of a device-resident uint8 image set with batched augmentation.

    images: numpy array or tensor, uint8 [N, H, W, C] (HWC, as `ArrayDataset.images`); labels: [N] ints.
    mean/std: per-channel normalisation in [0, 1] units.  indices: optional subset (e.g. the proxy) of
    positions in `images`; only that subset is copied to the device.
    Yields x [B, C, H, W] of `dtype` (float32 by default; channels_last if `memory_format` says so) and
    y int64 [B], both on `device`.  `len(loader)` is the number of batches per epoch on this rank.
    """

    def __init__(
        self,
        images,
        labels,
        batch_size: int,
        *,
        device="cpu",
        train: bool = True,
        mean,
        std,
        pad: int = 4,
        flip: bool = True,
        cutout: int = 0,
        shuffle: bool | None = None,
        drop_last: bool = False,
        seed: int = 0,
        indices=None,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.train = bool(train)
        self._init_epochs(batch_size=batch_size, shuffle=self.train if shuffle is None else shuffle,
                          drop_last=drop_last, seed=seed, rank=rank, world_size=world_size)
        self._set_augmentation(pad=pad, flip=flip, cutout=cutout, dtype=dtype, memory_format=memory_format)
        self.device = torch.device(device)
        images_t, labels_t = self._select_examples(images, labels, indices)
        self._store_on_device(images_t, labels_t, mean, std)

    def _set_augmentation(self, *, pad: int, flip: bool, cutout: int, dtype: torch.dtype,
                          memory_format: torch.memory_format) -> None:
        """Checks and keeps the batch format and the augmentation (none in eval mode)."""
        if pad < 0 or cutout < 0:
            raise ValueError(f"pad and cutout must be >= 0, got pad={pad}, cutout={cutout}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        if memory_format not in (torch.contiguous_format, torch.channels_last):
            raise ValueError(f"memory_format must be contiguous_format or channels_last, got {memory_format}")
        self.pad = int(pad) if self.train else 0
        self.flip = bool(flip) and self.train
        self.cutout = int(cutout) if self.train else 0
        self.dtype = dtype
        self.memory_format = memory_format

    def _select_examples(self, images, labels, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """The checked images (uint8 NHWC, on the CPU) and labels of the `indices` subset (all by default);
        sets `indices`, `num_examples` and the image size."""
        images_t = _as_uint8_nhwc(images)
        labels_t = _as_labels(labels, images_t.shape[0])
        if indices is None:
            self.indices = torch.arange(images_t.shape[0])
        else:
            self.indices = _as_indices(indices, images_t.shape[0])
            images_t = images_t.index_select(0, self.indices)
            labels_t = labels_t.index_select(0, self.indices)
        if images_t.shape[0] == 0:
            raise ValueError("ResidentLoader got an empty image set")
        self.num_examples = images_t.shape[0]
        self.image_height, self.image_width = images_t.shape[1:3]
        return images_t, labels_t

    def _store_on_device(self, images_t: torch.Tensor, labels_t: torch.Tensor, mean, std) -> None:
        """One upload of the raw bytes, then NHWC -> NCHW (and the zero padding of train mode) on the device;
        the normalisation constants there too."""
        channels = images_t.shape[3]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values, got mean={mean}, std={std}")
        stored = images_t.to(self.device).permute(0, 3, 1, 2)
        if self.pad:
            stored = F.pad(stored, (self.pad,) * 4)
        self.images = stored.contiguous()
        self.labels = labels_t.to(self.device)
        self._scale, self._shift = normalization_constants(mean, std, self.device)

    @classmethod
    def from_dataset(cls, dataset, batch_size: int, **kwargs) -> "ResidentLoader":
        """Builds a loader from an `ArrayDataset` (images, labels, mean, std)."""
        kwargs.setdefault("mean", dataset.mean)
        kwargs.setdefault("std", dataset.std)
        return cls(dataset.images, dataset.labels, batch_size, **kwargs)

    # ------------------------------------------------------------------ epoch plan
    def epoch_plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's order and augmentation draws for `epoch` (default: the current one), on CPU."""
        order, generator = self.epoch_order_and_generator(epoch)
        params = draw_augment_params(order.numel(), generator, pad=self.pad, height=self.image_height,
                                     width=self.image_width, flip=self.flip)
        order = self.rank_share(order)
        params = params.slice(slice(self.rank, None, self.world_size))
        return EpochPlan(order=order, example_index=self.indices[order], params=params)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        plan = self.epoch_plan()
        pinned = self.device.type == "cuda"
        order = _upload(plan.order, self.device, pinned)
        params = AugmentParams(*(_upload(t, self.device, pinned) for t in plan.params.as_tuple()))
        count = order.numel()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = slice(start, min(start + self.batch_size, count))
            yield self._make_batch(order[batch], params.slice(batch))

    def _make_batch(self, sample: torch.Tensor, params: AugmentParams):
        if self.train:
            pixels = crop_and_flip(self.images, sample, params.offset_y, params.offset_x,
                                   params.flip if self.flip else None, self.image_height, self.image_width)
        else:
            pixels = self.images.index_select(0, sample)
        x = normalize(pixels, self._scale, self._shift, torch.float32)
        if self.cutout:
            apply_cutout_(x, params.cutout_y, params.cutout_x, self.cutout)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.memory_format == torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, sample)


def _upload(tensor: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    if pinned:
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _as_uint8_nhwc(images) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[3] not in (1, 3):
        raise ValueError(
            f"images must be uint8 [N, H, W, C] (HWC, C = 1 or 3), got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor


def _as_labels(labels, count: int) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if tensor.dim() != 1 or tensor.shape[0] != count:
        raise ValueError(f"labels must have shape [{count}] to match the images, got {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {tensor.dtype}")
    return tensor.to(torch.int64)


def _as_indices(indices, count: int) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    if tensor.dim() != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"indices must be a 1-D integer sequence, got {tensor.dtype} {tuple(tensor.shape)}")
    tensor = tensor.to(torch.int64).cpu()
    if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= count):
        raise ValueError(f"indices must lie in [0, {count}), got range [{int(tensor.min())}, {int(tensor.max())}]")
    return tensor
