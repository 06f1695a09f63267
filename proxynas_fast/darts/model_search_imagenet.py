"""Search networks for 224x224 ImageNet images (the PC-DARTS ImageNet search layout).

A three-convolution stem takes the image to 1/8 resolution before the first cell (224 -> 28):
    stem0 = conv3x3/2 (C_stem/2), BN, ReLU, conv3x3/2 (C_stem), BN     -> 1/4, the first cell's s0
    stem1 = ReLU, conv3x3/2 (C_stem), BN                                -> 1/8, the first cell's s1
with C_stem = stem_multiplier * C as in the reference code. Because s0 has twice s1's resolution, the first cell
is built with reduction_prev=True (its preprocess0 is a FactorizedReduce). The two reduction cells then bring
28 -> 14 -> 7 before global average pooling.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .model_search import Network
from .pcdarts import PCDARTS_IMAGENET_K, PCNetwork


class ImageNetStemMixin:
    """Replaces the 32x32 stem of a search network by the stride-8 ImageNet stem."""

    _first_reduction_prev = True

    def _build_stem(self, C_stem: int) -> None:
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C_stem // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_stem // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C_stem // 2, C_stem, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        self.stem1 = nn.Sequential(
            # Not in place: s0 is still needed by the first cell. (The reference relu's s0 in place here, which
            # changes nothing because that cell's FactorizedReduce starts with a ReLU.)
            nn.ReLU(inplace=False),
            nn.Conv2d(C_stem, C_stem, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )

    def _stem_forward(self, x: torch.Tensor):
        if self._stem_in_channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = self._run_stem(self.stem0, x)
        return s0, self._run_stem(self.stem1, s0)

    def _stem_in_channels_last(self, x: torch.Tensor) -> bool:
        """The fused backend runs this stem in channels_last on CPU: oneDNN's dense 3x3 convolutions at 224, 112
        and 56 px are faster in that layout (docs/PERFORMANCE.md). The cells take either layout; the reference
        backend keeps the reference code's NCHW; float64 (no oneDNN kernel, nothing to gain) stays NCHW too."""
        return (self.backend == "fused" and x.device.type == "cpu" and x.dim() == 4
                and x.dtype in (torch.float32, torch.bfloat16))


class NetworkImageNetSearch(ImageNetStemMixin, Network):
    """DARTS supernet (full-channel mixed ops) with the ImageNet stem."""


class PCNetworkImageNetSearch(ImageNetStemMixin, PCNetwork):
    """PC-DARTS ImageNet search network (partial channels with k=2 by default, edge normalisation)."""

    def __init__(self, C, num_classes, layers, criterion=None, steps=4, multiplier=4, stem_multiplier=3,
                 k=PCDARTS_IMAGENET_K, backend="auto"):
        super().__init__(C, num_classes, layers, criterion, steps=steps, multiplier=multiplier,
                         stem_multiplier=stem_multiplier, k=k, backend=backend)
