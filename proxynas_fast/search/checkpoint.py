"""Per-epoch search checkpoints: written atomically, restored exactly.

A checkpoint holds everything the next epoch depends on: network weights and buffers, the architecture
weights, both optimisers, the learning-rate schedule, the epoch counter, the loaders' state and the RNG
states of Python, NumPy and torch (CPU and every CUDA device). Restoring it and running the remaining
epochs gives the same result as never stopping (bitwise on CPU with --deterministic).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from proxynas_fast.atomic import atomic_torch_save
from proxynas_fast.darts.genotypes import genotype_to_dict
from proxynas_fast.rng import capture_rng_state, restore_rng_state
from proxynas_fast.safe_load import UnsafeFileError, load_plain

from .errors import SearchError

CHECKPOINT_NAME = "checkpoint.pt"


FORMAT_VERSION = 1


def save_checkpoint(path, state: Dict[str, Any]) -> None:
    """torch.save into a temporary file beside `path`, fsync, then rename over it: a reader (or a resume
    after a crash) sees the old checkpoint or the new one, never a partial file."""
    atomic_torch_save(dict(state, format_version=FORMAT_VERSION), path)


def checkpoint_state(parts, loaders, epochs_done: int, config) -> Dict[str, Any]:
    """What checkpoint.pt holds after `epochs_done` epochs: `parts` (the search's model, optimisers, schedule and
    architect), the loaders' positions, the RNG states and the options (`config.to_dict()`)."""
    return {
        "epochs_done": epochs_done,
        "config": config.to_dict(),
        "model": parts.model.state_dict(),
        "arch": parts.model.arch_state(),
        "optimizer": parts.optimizer.state_dict(),
        "arch_optimizer": parts.architect.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "loaders": {k: loader.state_dict() for k, loader in loaders.items()},
        "rng": capture_rng_state(),
        "genotype": genotype_to_dict(parts.model.genotype()),
    }


def restore_state(state: Dict[str, Any], parts, loaders) -> int:
    """Put a checkpoint's state back into `parts` and the loaders, and the RNGs; the epochs it had done."""
    parts.model.load_state_dict(state["model"])
    parts.model.load_arch_state(state["arch"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.architect.optimizer.load_state_dict(state["arch_optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    for key, loader in loaders.items():
        if key in state["loaders"]:
            loader.load_state_dict(state["loaders"][key])
    restore_rng_state(state["rng"])
    return int(state["epochs_done"])


def load_checkpoint(path, map_location: Any = "cpu") -> Dict[str, Any]:
    path = Path(path)
    try:
        state = load_plain(path, map_location=map_location)
    except FileNotFoundError:
        raise
    except UnsafeFileError as e:
        raise SearchError(f"--resume: checkpoint {e}; delete it to start over") from None
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


def read_epochs_done(path) -> Optional[Tuple[int, int]]:
    """(epochs done, epochs of the run) of a checkpoint, or None when it cannot be read."""
    try:
        state = load_plain(path)
        return int(state["epochs_done"]), int(state["config"]["epochs"])
    except Exception:  # noqa: BLE001 - only for a message
        return None


def proxy_fingerprint(weights, arch) -> Dict[str, Any]:
    """What identifies the proxy halves a checkpoint was trained on: their sizes and a hash of their indices."""
    h = hashlib.sha1()
    for part in (weights, arch):
        a = np.ascontiguousarray(np.sort(np.asarray(part, dtype=np.int64)))
        h.update(a.tobytes())
        h.update(b"|")
    return {"weights": int(len(weights)), "arch": int(len(arch)), "sha1": h.hexdigest()[:16]}
