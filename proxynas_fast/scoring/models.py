"""Scorer networks by name, and loading their weights from checkpoint files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn as nn

from ..safe_load import UnsafeFileError, load_plain
from ..scorer_weights import layout_hint
from ..registry import Registry
from .resnet_cifar import resnet20, resnet32, resnet44, resnet56, resnet110
from .resnet_imagenet import resnet18, resnet50

SCORERS: Registry[Callable[[int], nn.Module]] = Registry("scorer architecture")
for _make in sorted((resnet20, resnet32, resnet44, resnet56, resnet110, resnet18, resnet50), key=lambda f: f.__name__):
    SCORERS.register(obj=_make)  # by function name; in sorted order, so errors list the names as list_scorers does


class CheckpointError(ValueError):
    """A checkpoint file that does not hold usable scorer weights; the message names the file."""


def list_scorers() -> List[str]:
    return sorted(SCORERS.names())


def create_scorer(arch: str, num_classes: int) -> nn.Module:
    return SCORERS.get(arch)(num_classes)


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The weights in a checkpoint: `{'state_dict': ...}` pickles, `{'model': ...}`, or a bare state_dict.
    A `module.` prefix (from DataParallel/DDP) is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = load_plain(path)
    except UnsafeFileError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for foreign files
        raise CheckpointError(f"{path}: not a torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found (keys: {list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_scorer(arch: str, checkpoint, num_classes: int) -> nn.Module:
    """Build `arch` and load its weights. BatchNorm step counters missing from older checkpoints (saved before
    PyTorch 0.4.1) are allowed; anything else missing, unexpected or mis-shaped raises
    CheckpointError naming the file (and, for the torchvision-layout networks, which file fits)."""
    model = create_scorer(arch, num_classes)
    try:
        state = read_state_dict(checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{e}{layout_hint(arch)}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{checkpoint}: does not fit {arch} with {num_classes} classes"
            + (f"; missing {missing[:4]}" if missing else "")
            + (f"; unexpected {unexpected[:4]}" if unexpected else "")
            + (f"; shape mismatch {shapes[:3]}" if shapes else "") + layout_hint(arch))
    model.load_state_dict(state, strict=False)
    return model
