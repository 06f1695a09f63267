"""CIFAR ResNets (He et al. 2016, section 4.2) with option-A shortcuts.

Three stages of n basic blocks with 16/32/64 channels; depth = 6n + 2 (20, 32, 44, 56, 110).
Option A: a shortcut that changes shape subsamples by 2 and zero-pads the new channels, so it has no
parameters. Layer names match the widely used CIFAR ResNet checkpoints (conv1, bn1, layer1..3, linear),
including the paper's scorer weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PadShortcut(nn.Module):
    """Option-A shortcut: stride-2 subsampling plus zero channels on both sides."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = PadShortcut(planes - in_planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes, planes, blocks, stride):
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (global-average-pooled, 64-d): the k-center selection space."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


def resnet20(num_classes=10):
    return CifarResNet(20, num_classes)


def resnet32(num_classes=10):
    return CifarResNet(32, num_classes)


def resnet44(num_classes=10):
    return CifarResNet(44, num_classes)


def resnet56(num_classes=10):
    return CifarResNet(56, num_classes)


def resnet110(num_classes=10):
    return CifarResNet(110, num_classes)
