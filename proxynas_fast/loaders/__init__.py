"""Data loaders at GPU speed.

* `ResidentLoader` - CIFAR/SVHN (proxy) sets kept on the device as uint8, augmented in batches there.
* `build_imagenet_loader` - ImageNet (proxy) file lists through an image store decoded once (batches augmented
  on the device), DALI (nvJPEG on GPU, or DALI's CPU decoder), or PIL + a torch DataLoader, with the same
  transforms; its keyword arguments are the fields of `ImageNetLoaderOptions`.

Both share the seeded, DDP-sharded, resumable epoch order of `sharding.ShardedEpochs`.
"""
from proxynas_fast.loaders.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFileError,
    ImageNetLoaderOptions,
    build_imagenet_loader,
    check_image_files,
    dali_available,
    select_files,
)
from proxynas_fast.loaders.resident import EpochPlan, ResidentLoader

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EpochPlan",
    "ImageFileError",
    "ImageNetLoaderOptions",
    "ResidentLoader",
    "build_imagenet_loader",
    "check_image_files",
    "dali_available",
    "select_files",
]
