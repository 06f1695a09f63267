"""The image-store backend of `build_imagenet_loader` (the default): decode once, augment batches as tensor ops.

On construction the loader opens its files' image store (`image_store.py`), decoding the files on
`num_threads` threads the first time; every epoch then reads uint8 images from the store's memory maps and runs
the transforms on whole batches on the loader's device (`batch_augment.py`; on the CPU the train transforms are
one fused kernel, `proxynas_fast::augment_crops`):

* train: RandomResizedCrop to S (torchvision's sampling on the stored square), horizontal flip, ColorJitter with
  a random op order per image, ImageNet normalisation.  A batch is arranged so that images sharing an op order
  are adjacent (at most 24 runs), which lets the colour ops work in place on slices.
* eval: the centre crop of EVAL_RESIZE_RATIO (resize the short side to S * 256/224, crop S) taken from the
  stored square, resized to S.

Random draws come from a CPU generator seeded by (seed, epoch, rank), so a CPU and a CUDA run agree.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from proxynas_fast.loaders.augment import normalization_constants, normalize
from proxynas_fast.loaders.batch_augment import (TrainParams, Workspace, augment_train_batch, centre_boxes,
                                                 draw_train_params, grouping_index, resample_boxes)
from proxynas_fast.loaders.image_store import DEFAULT_STORE_SIZE, ImageStore, StoreBuild, open_store
from proxynas_fast.loaders.imagenet_base import (CROP_AREA, CROP_RATIO, EVAL_RESIZE_RATIO, IMAGENET_MEAN,
                                                 IMAGENET_STD, JITTER, ImageFileError, ImageNetLoader,
                                                 ImageNetLoaderOptions)
from proxynas_fast.loaders.sharding import epoch_generator


class StoreImageNetLoader(ImageNetLoader):
    backend = "store"

    def __init__(self, files, labels, options: ImageNetLoaderOptions):
        # The store build decodes every file (a bad one raises ImageFileError naming it): no separate check.
        super().__init__(files, labels, _without_check(options))
        self.store_size = int(options.store_size or DEFAULT_STORE_SIZE)
        self.store, self.store_build = open_store(self.files, self.store_size, threads=max(1, self.num_threads),
                                                  skip_bad=self.skip_bad_images)
        self._positions = list(range(len(self.files)))  # store position of each readable file
        if self.store.unreadable:
            kept = [i for i, f in enumerate(self.files) if f not in self.store.unreadable]
            if not kept:
                raise ImageFileError(f"every selected image file is unreadable (first: "
                                     f"{next(iter(self.store.unreadable))})")
            self.skipped_files = list(self.store.unreadable)
            self._positions = kept
            self.files = [self.files[i] for i in kept]
            self.labels = [self.labels[i] for i in kept]
        self._labels = torch.tensor(self.labels, dtype=torch.int64)
        self._scale, self._shift = normalization_constants(IMAGENET_MEAN, IMAGENET_STD, self.device)
        self._workspace = Workspace()

    def _iterate(self, epoch: int):
        positions = self.rank_positions(epoch)
        generator = epoch_generator(self.seed ^ 0x5EED, epoch * 65536 + self.rank)
        for start in range(0, len(positions), self.batch_size):
            batch = positions[start:start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield self._batch(torch.tensor(batch, dtype=torch.int64), generator)

    def _batch(self, batch: torch.Tensor, generator: torch.Generator):
        size, stored = self.image_size, self.store_size
        if self.train:
            params = draw_train_params(len(batch), stored, stored, generator, JITTER, CROP_AREA, CROP_RATIO)
            arranged = grouping_index(params)
            batch = batch[arranged]
            params = TrainParams(params.boxes[arranged], params.flip[arranged], params.factors[arranged],
                                 params.order[arranged])
        store_positions = [self._positions[i] for i in batch.tolist()]
        pixels = torch.from_numpy(self.store.gather(store_positions))
        on_gpu = self.device.type == "cuda"
        pixels = pixels.to(self.device, non_blocking=on_gpu)
        labels = self._labels[batch].to(self.device, non_blocking=on_gpu)
        if self.train:  # on the CPU one fused pass per image (batch_augment.augment_train_batch)
            return augment_train_batch(pixels, params, size, self._scale, self._shift, self._workspace), labels
        boxes = centre_boxes(len(batch), stored, stored, 1 / EVAL_RESIZE_RATIO)
        x = resample_boxes(pixels.permute(0, 3, 1, 2).float(), boxes, size)
        x = normalize(x, self._scale, self._shift)  # x holds [0, 255] levels, as normalize expects
        return x.contiguous(), labels


def _without_check(options: ImageNetLoaderOptions) -> ImageNetLoaderOptions:
    return replace(options, check_files="none")


__all__ = ["ImageStore", "StoreBuild", "StoreImageNetLoader"]
