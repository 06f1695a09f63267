"""Per-epoch search checkpoints: written atomically, restored exactly.

A checkpoint holds everything the next epoch depends on: network weights and buffers, the architecture
weights, both optimisers, the learning-rate schedule, the epoch counter, the loaders' state and the RNG
states of Python, NumPy and torch (CPU and every CUDA device). Restoring it and running the remaining
epochs gives the same result as never stopping (bitwise on CPU with --deterministic).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from proxynas_fast.atomic import atomic_torch_save

from .errors import SearchError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def save_checkpoint(path, state: Dict[str, Any]) -> None:
    """torch.save into a temporary file beside `path`, fsync, then rename over it: a reader (or a resume
    after a crash) sees the old checkpoint or the new one, never a partial file."""
    atomic_torch_save(dict(state, format_version=FORMAT_VERSION), path)


def load_checkpoint(path, map_location: Any = "cpu") -> Dict[str, Any]:
    path = Path(path)
    try:
        # Our own file: it holds RNG tuples and numpy arrays, which weights_only loading refuses.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure: say which file
        raise SearchError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to start over")
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise SearchError(f"checkpoint {path} is not a proxynas_fast search checkpoint (format "
                           f"{state.get('format_version') if isinstance(state, dict) else type(state).__name__})")
    return state


def remove_stale_temporaries(folder) -> None:
    """Delete half-written checkpoint temporaries left by a killed run."""
    for p in Path(folder).glob(f".{CHECKPOINT_NAME}.*"):
        try:
            p.unlink()
        except OSError:
            pass


def find_checkpoint(folder) -> Optional[Path]:
    p = Path(folder) / CHECKPOINT_NAME
    return p if p.is_file() else None
