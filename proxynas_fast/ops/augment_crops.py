"""The image store's train-time augmentation of a batch in one pass (`proxynas_fast::augment_crops`, CPU only).

The op fuses loaders/batch_augment.py's tensor-op path (`resample_boxes`, `color_jitter`, `normalize`) into one
sweep per image; that path is its reference and the fallback (`batch_augment.augment_train_batch` picks one).
"""
from __future__ import annotations

import torch

from .. import extension

Tensor = torch.Tensor


def kernel_available(device: torch.device | str) -> bool:
    """Whether the compiled op runs on `device` (the CPU kernel of an extension that has it; no CUDA kernel)."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return kind == "cpu" and extension.has_cpu_kernels() and hasattr(torch.ops.proxynas_fast, "augment_crops")


def augment_crops(images: Tensor, boxes: Tensor, flip: Tensor, factors: Tensor, order: Tensor, size: int,
                  scale: Tensor, shift: Tensor) -> Tensor:
    """float32 [B, 3, size, size]: each uint8 [B, H, W, 3] image's (top, left, height, width) box (float64 [B, 4])
    resized to size x size (pixel centres aligned, the box's edge pixels repeated at its borders), mirrored where
    `flip` (bool [B]), brightness / contrast / saturation factors and hue shift (float64 [B, 4]) applied in each
    image's `order` (int64 [B, 4]) on [0, 255] levels, then `x * scale - shift` per channel (float32, 3 values
    each, as `augment.normalization_constants` gives them)."""
    return torch.ops.proxynas_fast.augment_crops(images, boxes, flip, factors, order, int(size),
                                                 scale.reshape(3), shift.reshape(3))


if kernel_available("cpu"):

    @torch.library.register_fake("proxynas_fast::augment_crops")
    def _augment_crops_fake(images, boxes, flip, factors, order, size, scale, shift):
        return images.new_empty((images.shape[0], 3, size, size), dtype=torch.float32)
