"""PIL + torch DataLoader backend of `build_imagenet_loader` (used when DALI is missing or not wanted).

The transforms are written here with PIL and numpy (torchvision is not a dependency); they follow
torchvision's RandomResizedCrop / RandomHorizontalFlip / ColorJitter / Resize / CenterCrop on PIL
images.  Workers return uint8 HWC crops (4x less inter-process traffic than float); conversion to
float, NCHW and normalisation happen batched on the target device.

Each item's random draws come from its own generator seeded by (seed, epoch, rank, position), so the
batches do not depend on the number of workers.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset

from proxynas_fast.loaders.augment import normalization_constants, normalize
from proxynas_fast.loaders.imagenet_base import (CROP_AREA, CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, JITTER,
                                                 ImageFileError, ImageNetLoader, ImageNetLoaderOptions)

logger = logging.getLogger("proxynas_fast.loaders")


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            area=CROP_AREA, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop covering `area` of the image with aspect ratio in `ratio`
    (log-uniform); after 10 misses a centre crop with the ratio clamped into range."""
    image_area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = image_area * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def shift_hue(image: Image.Image, hue: float) -> Image.Image:
    """Rotates the hue by `hue` (fraction of the colour circle, in [-0.5, 0.5])."""
    h, s, v = image.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int16) + int(round(hue * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: np.random.Generator, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.2) -> Image.Image:
    """Brightness/contrast/saturation factors uniform in [1 - a, 1 + a], hue shift uniform in
    [-hue, hue], applied in a random order (torchvision's ColorJitter semantics)."""
    factors = [rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
               rng.uniform(1 - saturation, 1 + saturation), rng.uniform(-hue, hue)]
    for op in rng.permutation(4):
        if op == 0:
            image = ImageEnhance.Brightness(image).enhance(factors[0])
        elif op == 1:
            image = ImageEnhance.Contrast(image).enhance(factors[1])
        elif op == 2:
            image = ImageEnhance.Color(image).enhance(factors[2])
        else:
            image = shift_hue(image, factors[3])
    return image


def train_transform(image: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Random-resized crop to size x size, flip, colour jitter -> uint8 [size, size, 3]."""
    left, top, w, h = random_resized_crop_box(image.width, image.height, rng)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = color_jitter(image, rng, **JITTER)
    return np.array(image, dtype=np.uint8)  # a writable copy for torch.from_numpy


def eval_transform(image: Image.Image, size: int, resize_size: int) -> np.ndarray:
    """Resize the short side to resize_size, centre crop size x size -> uint8 [size, size, 3]."""
    width, height = image.size
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class _EpochFiles(Dataset):
    """One rank's files for one epoch, decoded and transformed per item."""

    def __init__(self, files, labels, *, train, image_size, resize_size, seed, epoch, rank, skip_bad_images):
        self.files, self.labels = files, labels
        self.train, self.image_size, self.resize_size = train, image_size, resize_size
        self.seed_words = [seed & 0xFFFFFFFF, epoch, rank]
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int):
        path = self.files[position]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")  # also greyscale / CMYK -> RGB
        except Exception as e:  # noqa: BLE001
            if self.skip_bad_images:
                logger.warning("skipping unreadable image file %s: %s: %s", path, type(e).__name__, e)
                return None
            detail = str(e).splitlines()[0] if str(e) else "no detail"
            raise ImageFileError(f"{_DECODE_FAILURE}{path}: {type(e).__name__}: {detail}", path=path) from e
        if self.train:
            pixels = train_transform(image, np.random.default_rng(self.seed_words + [position]), self.image_size)
        else:
            pixels = eval_transform(image, self.image_size, self.resize_size)
        return torch.from_numpy(pixels), self.labels[position]


_DECODE_FAILURE = "cannot decode image file "


def worker_error_message(message: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker: torch puts the worker's
    whole traceback ("Caught ... in DataLoader worker process N. Original Traceback ...") into the message."""
    if "Original Traceback" not in message:
        return message
    lines = [line for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else message
    head, sep, rest = last.partition("ImageFileError: ")
    return rest if sep and " " not in head.strip() else last


def _named_path(message: str):
    """The file a decode failure names (`cannot decode image file PATH: Type: detail`), else None."""
    if not message.startswith(_DECODE_FAILURE):
        return None
    path, _, _ = message[len(_DECODE_FAILURE):].rpartition(": ")
    path, _, _ = path.rpartition(": ")
    return path or None


def _collate_readable(items):
    items = [item for item in items if item is not None]
    if not items:
        return None
    return torch.stack([pixels for pixels, _ in items]), torch.tensor([label for _, label in items], dtype=torch.int64)


class PilImageNetLoader(ImageNetLoader):
    backend = "pil"

    def __init__(self, files, labels, options: ImageNetLoaderOptions):
        super().__init__(files, labels, options)
        self._scale, self._shift = normalization_constants(IMAGENET_MEAN, IMAGENET_STD, self.device)

    def _iterate(self, epoch: int):
        positions = self.rank_positions(epoch)
        dataset = _EpochFiles(
            [self.files[i] for i in positions], [self.labels[i] for i in positions], train=self.train,
            image_size=self.image_size, resize_size=self.resize_size, seed=self.seed, epoch=epoch,
            rank=self.rank, skip_bad_images=self.skip_bad_images)
        on_gpu = self.device.type == "cuda"
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_threads,
                            collate_fn=_collate_readable, pin_memory=on_gpu, drop_last=self.drop_last)
        batches = iter(loader)
        while True:
            failure = None
            try:
                batch = next(batches)
            except StopIteration:
                return
            except ImageFileError as e:  # from __getitem__ or re-raised from a worker; names the file
                # The exception's frames form a reference cycle that would keep the worker processes
                # alive until a garbage collection (whose shutdown then stalls ~5 s): cut it and
                # shut the workers down now.
                e.__traceback__ = None
                message = worker_error_message(str(e))
                failure = ImageFileError(message, path=e.path or _named_path(message))
            if failure is not None:
                del batches
                raise failure
            if batch is None:  # every file of the batch was unreadable and skipped
                continue
            pixels, labels = batch
            pixels = pixels.to(self.device, non_blocking=on_gpu).permute(0, 3, 1, 2)
            x = normalize(pixels, self._scale, self._shift).contiguous()
            yield x, labels.to(self.device, non_blocking=on_gpu)
