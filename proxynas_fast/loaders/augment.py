"""Batched CIFAR-style augmentation on uint8 image tensors that already sit on the device.

These are the building blocks of `ResidentLoader`; each works on a whole batch with a handful of
tensor ops (no per-sample Python), on CPU and CUDA alike:

* `crop_and_flip`      - random crop of a zero-padded image at per-sample offsets, optional
                         horizontal flip (torchvision `RandomCrop(32, padding=4)` + `RandomHorizontalFlip`).
* `normalize`          - uint8 -> float, `(x / 255 - mean) / std` per channel.
* `apply_cutout_`      - DARTS cutout: zero a square of side `length` (clipped at the border) centred at
                         a per-sample pixel.  As in DARTS it runs after normalisation, so the cut area is
                         exactly 0 in the normalised output (not the normalised value of black).

The random parameters are drawn by the caller (see `draw_augment_params`) so that they can be recorded
and a test can replay them on a straightforward per-sample reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentParams:
    """Per-sample random draws for one sequence of samples (CPU or device tensors, int64/bool)."""

    offset_y: torch.Tensor  # crop offset into the padded image, in [0, 2 * pad]
    offset_x: torch.Tensor
    flip: torch.Tensor  # bool: mirror horizontally
    cutout_y: torch.Tensor  # cutout centre row, in [0, H)
    cutout_x: torch.Tensor  # cutout centre column, in [0, W)

    def slice(self, index) -> "AugmentParams":
        return AugmentParams(*(t[index] for t in self.as_tuple()))

    def as_tuple(self) -> tuple:
        return (self.offset_y, self.offset_x, self.flip, self.cutout_y, self.cutout_x)


def draw_augment_params(
    count: int, generator: torch.Generator, *, pad: int, height: int, width: int, flip: bool
) -> AugmentParams:
    """Draws crop offsets, flips and cutout centres for `count` samples from a CPU generator.

    Drawing on the CPU keeps the stream identical on every device, so a CPU and a CUDA loader with the
    same seed produce the same batches.  The draw order is fixed; do not reorder these calls.
    """
    offsets = torch.randint(0, 2 * pad + 1, (2, count), generator=generator)
    flips = torch.randint(0, 2, (count,), generator=generator).bool()
    if not flip:
        flips.zero_()
    centre_y = torch.randint(0, height, (count,), generator=generator)
    centre_x = torch.randint(0, width, (count,), generator=generator)
    return AugmentParams(offsets[0], offsets[1], flips, centre_y, centre_x)


def crop_and_flip(
    padded: torch.Tensor, sample: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor,
    flip: torch.Tensor | None, out_height: int, out_width: int,
) -> torch.Tensor:
    """Crops `padded[sample[i]]` ([N, C, H + 2p, W + 2p]) at (offset_y[i], offset_x[i]) and mirrors
    the crops where `flip[i]` (no flipping when `flip` is None).  Returns [B, C, out_height, out_width]
    in padded's dtype.

    How: the batch's padded images, followed by their mirrored copies, are flattened; a strided view
    lists every `out_width`-long run of that buffer as a row, and one `index_select` copies the
    C * out_height runs of each crop (a mirrored crop is a crop of the mirrored copy, at the mirrored
    column offset).  Copying whole rows moves contiguous runs instead of gathering single pixels
    through unfold windows + `torch.where`, and it is one gather kernel on the GPU.
    """
    batch = padded.index_select(0, sample)
    count, channels, padded_h, padded_w = batch.shape
    device = batch.device
    image = torch.arange(count, device=device)
    if flip is not None:
        batch = torch.cat([batch, batch.flip(3)])
        image = image + count * flip.long()
        offset_x = torch.where(flip, (padded_w - out_width) - offset_x, offset_x)
    plane = padded_h * padded_w
    start = image * (channels * plane) + offset_y * padded_w + offset_x
    row_start = (start.view(-1, 1, 1)
                 + (torch.arange(channels, device=device) * plane).view(1, -1, 1)
                 + (torch.arange(out_height, device=device) * padded_w).view(1, 1, -1))
    flat = batch.reshape(-1)
    runs = flat.as_strided((flat.numel() - out_width + 1, out_width), (1, 1))
    return runs.index_select(0, row_start.reshape(-1)).view(count, channels, out_height, out_width)


def normalize(
    images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`images * scale - shift` per channel in float32, with scale = 1 / (255 std), shift = mean / std
    (broadcastable [1, C, 1, 1]); then cast to `dtype`."""
    out = images.to(torch.float32).mul_(scale).sub_(shift)
    return out if dtype == torch.float32 else out.to(dtype)


def normalization_constants(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) for `normalize` from mean/std given in [0, 1] units."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    if bool((std_t <= 0).any()):
        raise ValueError(f"std must be positive, got {tuple(std_t.flatten().tolist())}")
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).to(device)
    shift = (mean_t / std_t).to(torch.float32).to(device)
    return scale, shift


def cutout_mask(
    centre_y: torch.Tensor, centre_x: torch.Tensor, length: int, height: int, width: int
) -> torch.Tensor:
    """Bool [B, 1, H, W], True inside each sample's cutout square.

    DARTS's `Cutout`: rows [clip(cy - L//2), clip(cy + L//2)), columns likewise, clipped to the image.
    (For odd L the square is L - 1 wide, as in DARTS.)"""
    half = length // 2
    ys = torch.arange(height, device=centre_y.device)
    xs = torch.arange(width, device=centre_x.device)
    in_rows = (ys >= (centre_y - half).clamp(0, height).unsqueeze(1)) & (
        ys < (centre_y + half).clamp(0, height).unsqueeze(1))
    in_cols = (xs >= (centre_x - half).clamp(0, width).unsqueeze(1)) & (
        xs < (centre_x + half).clamp(0, width).unsqueeze(1))
    return (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)


def apply_cutout_(
    images: torch.Tensor, centre_y: torch.Tensor, centre_x: torch.Tensor, length: int
) -> torch.Tensor:
    """Zeroes each sample's cutout square in place (all channels) and returns `images`.

    Multiplies by a 0/1 mask (on CPU ~8x faster than a broadcast `masked_fill_`); the cut area may
    hold -0.0, which equals 0."""
    if length <= 0:
        return images
    mask = cutout_mask(centre_y, centre_x, length, images.shape[-2], images.shape[-1])
    return images.mul_(torch.logical_not(mask).to(images.dtype))
