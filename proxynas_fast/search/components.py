"""The search's trainable parts: the network of the strategy, its weight optimiser and schedule, the
architect (alphas and their optimiser), and the seed and determinism settings they start from.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from proxynas_fast.darts import Architect

from .config import SearchConfig
from .distributed import DistContext, broadcast_, convert_sync_batchnorm, wrap_model
from .strategies import get_strategy


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """--deterministic: deterministic kernels everywhere; on CUDA, ops without one only warn (bitwise equality
    is promised on CPU). Otherwise let cuDNN pick the fastest algorithms."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@dataclass
class SearchComponents:
    model: nn.Module
    forward_model: nn.Module  # DDP wrapper, or the model
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    architect: Any


def build_components(config: SearchConfig, num_classes: int, device: torch.device, ctx: DistContext,
                     backend: str) -> SearchComponents:
    strategy = get_strategy(config.strategy)
    criterion = nn.CrossEntropyLoss().to(device)
    model = strategy.build_model(dataset=config.dataset, C=config.init_channels, num_classes=num_classes,
                                 layers=config.layers, criterion=criterion, backend=backend).to(device)
    if config.sync_bn and ctx.enabled:  # before DDP and the optimizer see the modules
        convert_sync_batchnorm(model)
    broadcast_(model.arch_parameters(), ctx)  # same start everywhere (DDP broadcasts the weights)
    # foreach: one call per update stage for all weights (torch's CPU default loops over the ~500 tensors in
    # Python); the same updates, bitwise
    optimizer = torch.optim.SGD(model.weights_parameters(), config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, eta_min=config.learning_rate_min)
    architect = Architect(model, config)
    return SearchComponents(model, wrap_model(model, ctx), criterion, optimizer, scheduler, architect)
