"""ImageNet training augmentation on whole batches as tensor ops (the image store's loader uses it).

torchvision's train transforms for the paper's ImageNet search, one batch at a time on the batch's device:

* `sample_crop_boxes`  - RandomResizedCrop's box sampling (scale (0.08, 1), log-uniform ratio (3/4, 4/3), ten
                         attempts, then the centre crop with the ratio clamped), vectorised over the batch.
* `resample_boxes`     - each image's box resized to S x S bilinearly as torchvision's resized_crop does (pixel
                         centres aligned, the box's edge pixels repeated at its borders), mirrored where flipped:
                         one `grid_sample` call.
* `color_jitter`       - ColorJitter(brightness, contrast, saturation, hue): factors uniform in
                         [max(0, 1 - x), 1 + x], hue shift uniform in [-h, h], the four ops in a random order drawn
                         per image (torchvision draws a permutation per call, i.e. per image).  The ops follow
                         torchvision's tensor definitions (grey = 0.299 R + 0.587 G + 0.114 B; contrast blends with
                         the mean grey of the image; hue rotates H in HSV); they run on float pixels in [0, 255]
                         without rounding between ops.

* `augment_train_batch` - the whole train transform of uint8 [B, H, W, 3] store pixels: on the CPU the fused
                         kernel `proxynas_fast::augment_crops` when the extension has it, else (and on a GPU) the
                         tensor ops above followed by the normalisation (`train_batch_tensor_ops`, the kernel's
                         reference).

Every random draw comes from a CPU generator (`draw_train_params`), so a CPU and a CUDA run with the same seed get
the same parameters, and a test can replay them one image at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from proxynas_fast import extension
from proxynas_fast.loaders.augment import normalize
from proxynas_fast.ops import augment_crops as fused

GREY_WEIGHTS = (0.299, 0.587, 0.114)
CROP_ATTEMPTS = 10
COLOR_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass
class TrainParams:
    """Per-image random draws of one batch (CPU tensors)."""

    boxes: torch.Tensor  # float64 [B, 4]: top, left, height, width in source pixels (integers, as torchvision)
    flip: torch.Tensor  # bool [B]
    factors: torch.Tensor  # float64 [B, 4]: brightness, contrast, saturation factors and the hue shift
    order: torch.Tensor  # int64 [B, 4]: the colour ops (indices into COLOR_OPS) in the order each image applies them


def sample_crop_boxes(count: int, height: int, width: int, generator: torch.Generator,
                      scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = CROP_ATTEMPTS) -> torch.Tensor:
    """float64 [count, 4] (top, left, h, w) boxes of torchvision's RandomResizedCrop.get_params on an image of
    height x width: per image up to `attempts` draws of (area fraction, log-ratio), the first that fits wins; none
    fitting: the whole image, cut to the nearest ratio bound when its own ratio lies outside `ratio`."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(count, attempts, generator=generator,
                                                                  dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(count, attempts, generator=generator,
                                                              dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, as Python's round() in torchvision
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    found = fits.any(1)
    offsets = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(offsets[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(offsets[:, 1] * (width - w + 1)).clamp(max=width - w)
    fallback = torch.tensor(_centre_box(height, width, ratio), dtype=torch.float64)
    boxes = torch.stack([top, left, h, w], 1)
    return torch.where(found.unsqueeze(1), boxes, fallback)


def _centre_box(height: int, width: int, ratio) -> tuple[float, float, float, float]:
    image_ratio = width / height
    if image_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif image_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return float((height - h) // 2), float((width - w) // 2), float(h), float(w)


def centre_boxes(count: int, height: int, width: int, fraction: float) -> torch.Tensor:
    """float64 [count, 4] centred square boxes whose side is `fraction` of the short side (the eval crop)."""
    side = fraction * min(height, width)
    box = [(height - side) / 2, (width - side) / 2, side, side]
    return torch.tensor(box, dtype=torch.float64).expand(count, 4).clone()


def draw_train_params(count: int, height: int, width: int, generator: torch.Generator, jitter: dict,
                      scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> TrainParams:
    """Crop boxes, flips, colour factors and op orders for `count` images; the draw order is fixed."""
    boxes = sample_crop_boxes(count, height, width, generator, scale, ratio)
    flip = torch.rand(count, generator=generator) < 0.5
    u = torch.rand(count, 4, generator=generator, dtype=torch.float64)
    lows = torch.tensor([max(0.0, 1 - jitter[k]) for k in COLOR_OPS[:3]] + [-jitter["hue"]], dtype=torch.float64)
    highs = torch.tensor([1 + jitter[k] for k in COLOR_OPS[:3]] + [jitter["hue"]], dtype=torch.float64)
    factors = lows + (highs - lows) * u
    order = torch.rand(count, 4, generator=generator).argsort(1)  # a uniform random permutation per image
    return TrainParams(boxes, flip, factors, order)


def resample_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """float [B, C, size, size]: each image's (top, left, h, w) box of `images` (float [B, C, H, W]) resized
    bilinearly to size x size, mirrored where `flip` -- torchvision's resized_crop on a PIL image when the box is
    no larger than `size`: pixel centres aligned, and sample positions clamped into the box, so that the crop's edge
    pixels repeat at its borders (as cropping first does).  One `grid_sample` call for the batch.  (A box larger
    than `size` is sampled, not averaged: the store keeps images no larger than the crop size by default.)"""
    count, _, height, width = images.shape
    device = images.device
    top, left, h, w = boxes.to(device=device, dtype=torch.float32).unbind(1)
    steps = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size  # output pixel centres in [0, 1)
    x_steps = steps.expand(count, size)
    if flip is not None:
        x_steps = torch.where(flip.to(device).unsqueeze(1), steps.flip(0).expand(count, size), x_steps)

    def grid_coordinate(start, length, steps, extent):
        source = start.unsqueeze(1) + steps * length.unsqueeze(1) - 0.5  # source pixel coordinate
        source = torch.minimum(torch.maximum(source, start.unsqueeze(1)), (start + length - 1).unsqueeze(1))
        return (2 * source + 1) / extent - 1  # grid_sample's normalised coordinate (align_corners=False)

    gx = grid_coordinate(left, w, x_steps, width)
    gy = grid_coordinate(top, h, steps.expand(count, size), height)
    grid = torch.stack([gx.unsqueeze(1).expand(count, size, size), gy.unsqueeze(2).expand(count, size, size)], 3)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Workspace:
    """Scratch memory kept between batches (a loader owns one), so the per-batch ops allocate nothing."""

    def __init__(self) -> None:
        self._buffers: dict = {}

    def get(self, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        """An uninitialised tensor of `shape`: a view of this name's buffer, grown when too small."""
        key = (name, dtype, torch.device(device))
        count = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < count:
            buffer = self._buffers[key] = torch.empty(count, dtype=dtype, device=device)
        return buffer[:count].view(shape)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] grey levels of float [B, 3, H, W]."""
    r, g, b = x.unbind(1)
    return torch.add(r, g, alpha=GREY_WEIGHTS[1] / GREY_WEIGHTS[0]).add_(b, alpha=GREY_WEIGHTS[2] / GREY_WEIGHTS[0]) \
        .mul_(GREY_WEIGHTS[0]).unsqueeze(1)


# The ops below write into their input (callers pass batches they own): fresh 4-D temporaries cost page faults
# that outweigh the arithmetic on the CPU.
def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul_(factor.view(-1, 1, 1, 1)).clamp_(0, 255)


def _blend_(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x * f + other * (1 - f), clamped to [0, 255], written into x (other broadcasts over the channels)."""
    f = factor.view(-1, 1, 1, 1)
    return x.mul_(f).add_(other.mul_(1 - f)).clamp_(0, 255)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # the mean grey level = the grey weights applied to the channel means (one reduction, no grey image)
    weights = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device)
    mean = (x.mean(dim=(2, 3)) * weights).sum(1).view(-1, 1, 1, 1)
    return _blend_(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend_(x, _grey(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """Rotates each image's hue by `shift` (fraction of the circle).  HSV keeps V = max and m = min under a hue
    rotation, so only H is computed, shifted and turned back into RGB with C = V - m:
    R = m + C clamp(|6H - 3| - 1, 0, 1), G = m + C clamp(2 - |6H - 2|, 0, 1), B = m + C clamp(2 - |6H - 4|, 0, 1)."""
    r, g, b = x.unbind(1)
    # Every intermediate lives in a workspace and each op writes into it (out= / in place): fresh [B, H, W]
    # temporaries cost a page fault per 4 KiB on the CPU, which costs more than the arithmetic itself.
    workspace = workspace or Workspace()
    value, low, chroma, h6, tmp = workspace.get("hue", (5, *r.shape), x.dtype, x.device).unbind(0)
    is_max = workspace.get("hue_flags", r.shape, torch.bool, x.device)
    torch.maximum(torch.maximum(r, g, out=value), b, out=value)
    torch.minimum(torch.minimum(r, g, out=low), b, out=low)
    torch.sub(value, low, out=chroma)
    # 6H * C by the max channel's sector (r first, then g, as torchvision): r: g - b; g: b - r + 2C; b: r - g + 4C
    torch.sub(r, g, out=h6).add_(chroma, alpha=4)
    torch.where(torch.eq(value, g, out=is_max), torch.sub(b, r, out=tmp).add_(chroma, alpha=2), h6, out=h6)
    torch.where(torch.eq(value, r, out=is_max), torch.sub(g, b, out=tmp), h6, out=h6)
    h6.div_(torch.clamp_min(chroma, 1e-6, out=tmp))  # chroma 0: h6 is 0 too
    h6.add_(6 * shift.view(-1, 1, 1).to(x.dtype))
    h6.sub_(torch.mul(h6, 1 / 6, out=tmp).floor_().mul_(6))  # into [0, 6)
    for channel, centre in zip((r, g, b), (3.0, 2.0, 4.0)):
        k = torch.sub(h6, centre, out=tmp).abs_()
        k = k.sub_(1) if centre == 3.0 else k.neg_().add_(2)
        torch.add(low, k.clamp_(0, 1).mul_(chroma), out=channel)
    return x


_COLOR_FUNCTIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def order_codes(order: torch.Tensor) -> torch.Tensor:
    """int64 [B]: each image's op order as one number (images with equal codes apply the ops alike)."""
    weights = torch.tensor([4 ** (order.shape[1] - 1 - i) for i in range(order.shape[1])], dtype=torch.int64)
    return (order.cpu().to(torch.int64) * weights).sum(1)


def grouping_index(params: TrainParams) -> torch.Tensor:
    """int64 [B]: the batch order that puts images with the same colour op order next to each other (stable)."""
    return torch.sort(order_codes(params.order), stable=True).indices


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor,
                 workspace: Workspace | None = None) -> torch.Tensor:
    """Applies each image's four colour ops in its own `order` to float [B, 3, H, W] in [0, 255], in place.

    Each run of images with the same order is one slice of the batch, jittered in place (a batch arranged by
    `grouping_index` has at most 24 runs; any other batch is arranged, jittered and put back)."""
    codes = order_codes(order)
    if bool((codes[1:] < codes[:-1]).any()):
        index = torch.sort(codes, stable=True).indices
        grouped = color_jitter(x.index_select(0, index.to(x.device)), factors[index], order[index], workspace)
        return x.index_copy_(0, index.to(x.device), grouped)
    factors = factors.to(dtype=x.dtype).cpu()
    order = order.cpu()
    workspace = workspace or Workspace()
    starts = [0] + (torch.nonzero(codes[1:] != codes[:-1]).squeeze(1) + 1).tolist() + [len(codes)]
    for start, end in zip(starts[:-1], starts[1:]):
        run = x[start:end]
        for op in order[start].tolist():
            run_factors = factors[start:end, op].to(x.device, non_blocking=True)
            if op == 3:
                adjust_hue(run, run_factors, workspace)
            else:
                _COLOR_FUNCTIONS[op](run, run_factors)
    return x


def train_batch_tensor_ops(pixels: torch.Tensor, params: TrainParams, size: int, scale: torch.Tensor,
                           shift: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """float32 [B, 3, size, size]: uint8 [B, H, W, 3] `pixels` cropped, resized and flipped (`resample_boxes`),
    jittered (`color_jitter`) and normalised (`x * scale - shift`, scale and shift [1, 3, 1, 1]), as tensor ops on
    the pixels' device (colour ops on a batch arranged by `grouping_index` run in place on its slices)."""
    images = pixels.permute(0, 3, 1, 2).float()
    x = resample_boxes(images, params.boxes, size, params.flip)
    x = color_jitter(x, params.factors, params.order, workspace)
    return normalize(x, scale, shift).contiguous()  # x holds [0, 255] levels, as normalize expects


def augment_train_batch(pixels: torch.Tensor, params: TrainParams, size: int, scale: torch.Tensor,
                        shift: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """`train_batch_tensor_ops`'s result; on the CPU from the fused kernel in one pass per image when the compiled
    extension has it (without it: the tensor ops and one warning)."""
    if pixels.device.type == "cpu":
        if fused.kernel_available(pixels.device):
            return fused.augment_crops(pixels, params.boxes, params.flip.to(torch.bool), params.factors,
                                       params.order.to(torch.int64), size, scale, shift)
        extension.warn_fallback("augment_crops", pixels.device)
    return train_batch_tensor_ops(pixels, params, size, scale, shift, workspace)
