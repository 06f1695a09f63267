"""Atomic file output: write to a temporary file in the target folder, then os.replace it into place.

An interrupted run therefore leaves either the previous file or the new one, never half a file. A write that
fails because the disk is full raises `DiskFullError` (an OSError, ENOSPC) naming the file, with the previous
file kept.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

# torch.save's C++ writer reports a full disk as a RuntimeError ("basic_ios::clear", "PytorchStreamWriter failed
# writing file", "unexpected pos N vs M") without the errno; the free space left tells it apart from other faults.
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL_BYTES = 16 << 20  # a writer that ran out fills the disk up to the last blocks


class DiskFullError(OSError):
    """No space left on the device while writing a file; the message names it and says what was kept."""


def _free_bytes(folder) -> int:
    st = os.statvfs(folder)
    # root may write into the blocks reserved for it; other users stop at f_bavail
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _is_full_disk(error: BaseException, folder) -> bool:
    if isinstance(error, OSError):
        return error.errno in _FULL_DISK_ERRNOS
    if isinstance(error, RuntimeError):
        try:
            return _free_bytes(folder) < _NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


def atomic_write(path, write: Callable[[str], None], keep_previous=None) -> Path:
    """Call write(tmp_path), flush it to disk, give it the usual permissions (mkstemp makes 0600), rename.

    keep_previous: a path that receives the file being replaced (renamed there just before the new one
    takes its place), so a reader can fall back to it if the newest one proves unreadable."""
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
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as e:
        full = _is_full_disk(e, path.parent)  # free space read before the partial file is removed
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            kept = f"the previous {path.name} is kept" if path.exists() else "no partial file is left"
            raise DiskFullError(errno.ENOSPC, f"{path}: no space left on device while writing it; {kept}") from e
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_torch_save(obj: Any, path, keep_previous=None) -> Path:
    """torch.save through a temporary file (checkpoints survive a kill mid-write)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp), keep_previous=keep_previous)


def remove_stale_temporaries(path) -> list:
    """Delete the temporaries `atomic_write(path, ...)` leaves when killed mid-write; the paths removed.
    Call it only while holding the output (no other writer of `path` can be running)."""
    path = Path(path)
    removed = []
    for p in path.parent.glob(f".{path.name}.*"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
