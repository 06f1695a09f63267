"""NVIDIA DALI backend of `build_imagenet_loader`.

Decoding: nvJPEG ("mixed": Huffman on the CPU, the rest on the GPU) when the device is CUDA; DALI's
CPU decoder (libjpeg-turbo, with region-of-interest decoding for the random crop) and a CPU-only
pipeline (device_id=None) otherwise.  Everything after decoding runs where the decoder put the image.

Order and sharding: each epoch gets its own pipeline whose `fn.readers.file` is given exactly the
selected files, in this epoch's order (`ImageNetLoader.global_order`: seeded by (seed, epoch),
DistributedSampler rules) and arranged so that DALI's contiguous split into `num_shards` shards hands
shard `rank` exactly this rank's share.  The reader itself does not shuffle (its own shuffling is
seeded by a constant or buffered, so it would neither follow our seed nor resume by epoch); building
a pipeline costs far less than an epoch.

Colour jitter: `fn.color_twist` with factors drawn like torchvision's ColorJitter (DALI applies the
four adjustments in a fixed order; hue is in degrees there, 0.2 of the circle = 72 degrees).
"""
from __future__ import annotations

import re

import torch

from proxynas_fast.loaders.imagenet_base import (CROP_AREA, CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, JITTER,
                                                 ImageFileError, ImageNetLoader, ImageNetLoaderOptions,
                                                 check_image_files, describe_bad_files)
from proxynas_fast.loaders.sharding import derived_seed, take_rank

READER_NAME = "Reader"


def build_pipeline(files, labels, *, train: bool, batch_size: int, num_threads: int, device_id, seed: int,
                   image_size: int, resize_size: int, shard_id: int, num_shards: int):
    """The DALI pipeline of one epoch: (image float CHW normalised, label int32)."""
    # DALI is optional and takes seconds to import: imported on first use (not to break an import cycle), so
    # that `import proxynas_fast.loaders` works without it and stays fast.
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pipe = Pipeline(batch_size=batch_size, num_threads=max(1, num_threads), device_id=device_id, seed=seed)
    decoder_device = "cpu" if device_id is None else "mixed"
    with pipe:
        encoded, label = fn.readers.file(
            files=list(files), labels=list(labels), shard_id=shard_id, num_shards=num_shards,
            random_shuffle=False, pad_last_batch=True, name=READER_NAME)
        if train:
            images = fn.decoders.image_random_crop(
                encoded, device=decoder_device, output_type=types.RGB, random_area=list(CROP_AREA),
                random_aspect_ratio=list(CROP_RATIO), num_attempts=10)
            images = fn.resize(images, resize_x=image_size, resize_y=image_size, interp_type=types.INTERP_LINEAR)
            images = fn.color_twist(
                images,
                brightness=fn.random.uniform(range=[1 - JITTER["brightness"], 1 + JITTER["brightness"]]),
                contrast=fn.random.uniform(range=[1 - JITTER["contrast"], 1 + JITTER["contrast"]]),
                saturation=fn.random.uniform(range=[1 - JITTER["saturation"], 1 + JITTER["saturation"]]),
                hue=fn.random.uniform(range=[-360.0 * JITTER["hue"], 360.0 * JITTER["hue"]]))
            crop_args = {"mirror": fn.random.coin_flip(probability=0.5)}
        else:
            images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=resize_size, interp_type=types.INTERP_LINEAR)
            crop_args = {"crop": (image_size, image_size)}
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mean=[255.0 * m for m in IMAGENET_MEAN],
            std=[255.0 * s for s in IMAGENET_STD], **crop_args)
        pipe.set_outputs(images, label if device_id is None else label.gpu())
    pipe.build()
    return pipe


def find_bad_files(files, message: str, num_threads: int) -> list[tuple[str, str]]:
    """The files to blame for a DALI failure: those named in its message, else those that fail a
    full decoding check."""
    known = set(files)
    named = [path for path in dict.fromkeys(re.findall(r"\S+", message)) if path in known]
    if named:
        reason = message.strip().splitlines()
        return [(path, next((line for line in reason if path in line), "DALI could not decode it"))
                for path in named]
    return check_image_files(files, "decode", num_threads)


class DaliImageNetLoader(ImageNetLoader):
    backend = "dali"

    def __init__(self, files, labels, options: ImageNetLoaderOptions):
        super().__init__(files, labels, options)
        if self.device.type == "cuda":
            self.device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        else:
            self.device_id = None  # CPU-only pipeline
        self.reader_files: list[str] = []  # what the last epoch's reader was given (all shards)

    def _iterate(self, epoch: int):
        # Optional, slow to import DALI: on first use (see build_pipeline), not to break an import cycle.
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        order = self.global_order(epoch)
        # Shard r of DALI's contiguous split must be exactly take_rank(order, r).
        arranged = torch.cat([take_rank(order, r, self.world_size) for r in range(self.world_size)]).tolist()
        self.reader_files = [self.files[i] for i in arranged]
        my_files = [self.files[i] for i in self.rank_share(order).tolist()]
        seed = derived_seed(self.seed, epoch, self.rank)
        pipe = build_pipeline(
            self.reader_files, [self.labels[i] for i in arranged], train=self.train, batch_size=self.batch_size,
            num_threads=self.num_threads, device_id=self.device_id, seed=seed, image_size=self.image_size,
            resize_size=self.resize_size, shard_id=self.rank, num_shards=self.world_size)
        batches = DALIGenericIterator(
            pipe, ["x", "y"], reader_name=READER_NAME, auto_reset=False, prepare_first_batch=False,
            last_batch_policy=LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.PARTIAL)
        try:
            while True:
                try:
                    batch = next(batches)[0]
                except StopIteration:
                    return
                except RuntimeError as e:
                    bad = find_bad_files(my_files, str(e), self.num_threads)
                    if not bad:
                        raise
                    raise ImageFileError(describe_bad_files(bad), path=bad[0][0]) from e
                yield batch["x"].to(self.device), batch["y"].reshape(-1).to(device=self.device, dtype=torch.int64)
        finally:
            del batches, pipe

