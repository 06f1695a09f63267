"""Atomic file output: write to a temporary file in the target folder, then os.replace it into place.

An interrupted run therefore leaves either the previous file or the new one, never half a file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), flush it to disk, give it the usual permissions (mkstemp makes 0600), rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=str(path.parent))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_torch_save(obj: Any, path) -> Path:
    """torch.save through a temporary file (checkpoints survive a kill mid-write)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
