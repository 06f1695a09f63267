"""Data loaders at GPU speed.

* `ResidentLoader` - CIFAR/SVHN (proxy) sets kept on the device as uint8, augmented in batches there.
* `build_imagenet_loader` - ImageNet (proxy) file lists through DALI (nvJPEG on GPU, or DALI's CPU
  decoder), or a PIL + torch DataLoader fallback with the same transforms.
"""
from proxynas_fast.loaders.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFileError,
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
    "ResidentLoader",
    "build_imagenet_loader",
    "check_image_files",
    "dali_available",
    "select_files",
]
