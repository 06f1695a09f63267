"""Tensor-or-array helpers that do not import torch (the CLI for entropy methods runs without it)."""
from __future__ import annotations

import sys

import numpy as np


def is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist once torch has been imported
    return torch is not None and isinstance(value, torch.Tensor)


def as_numpy(value) -> np.ndarray:
    if is_tensor(value):
        return value.detach().cpu().numpy()
    return np.asarray(value)
