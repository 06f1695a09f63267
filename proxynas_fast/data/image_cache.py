"""The decoded-image cache: folders of JPEGs decoded once into `<name>-<split>-<key>.npy` files.

The key names the files decoded (`readers.cache_key`: resolved paths, sizes, modification times): the whole split, or
each selection a `LazyImageDataset` decoded (a 1,000-image CIFAR-10 proxy is a 3 MB entry of its own).

Location: `$PROXYNAS_CACHE`, default `~/.cache/proxynas_fast`. Size: at most `$PROXYNAS_CACHE_MAX_BYTES`
(default 2 GiB; the CIFAR-10 training set is ~150 MB); after each write the least recently used entries
(by modification time, refreshed on every hit) go first, never the one just written.

An entry is written to `.partial-<pid>@<host>-*.npy` beside it, held under an `fcntl.flock` while it is written,
then renamed into place. Every exit path of the writer removes its partial file (an exception or Ctrl-C, in
`finally`); what a kill -9 leaves is removed by the next run's sweep (reader or writer). The sweep deletes a
partial file only when its writer is gone (the pid in its name is not a live process of this host) AND no process
holds its lock: the lock alone leaves a window between the writer creating the file and locking it, in which
another process's sweep used to delete it. A partial file of another host is left until it is an hour old (its
pid cannot be checked from here); so are `tmp*.npy` files of the earlier writer. Failing to write the cache is a
warning, never an error: it is only a cache.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 << 30
PARTIAL_PREFIX = ".partial-"
LEGACY_PARTIAL_AGE_S = 3600  # tmp*.npy of the earlier writer carry no lock: only old ones are surely orphans
FOREIGN_PARTIAL_AGE_S = 3600  # another host's writer cannot be checked from here: only old partials are orphans
PARTIAL_OWNER = re.compile(r"^\.partial-(\d+)@([^-/]*)-")
ENTRY_NAME = re.compile(r"^[a-z0-9_]+-[a-z]+-[0-9a-f]{16}\.npy$")


def cache_dir() -> Path:
    return Path(os.environ.get("PROXYNAS_CACHE", Path.home() / ".cache" / "proxynas_fast"))


def max_cache_bytes() -> int:
    raw = os.environ.get("PROXYNAS_CACHE_MAX_BYTES")
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        log.warning("PROXYNAS_CACHE_MAX_BYTES=%r is not a whole number of bytes; using %d", raw, DEFAULT_MAX_BYTES)
        return DEFAULT_MAX_BYTES
    return max(0, value)


def entry_path(name: str, split: str, key: str) -> Path:
    return cache_dir() / f"{name}-{split}-{key}.npy"


def load_entry(path: Path, shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    """The cached array if present, readable and of `shape` (its use time refreshed), else None. Sweeps the
    orphans of killed writers first (a run that only reads the cache cleans up too)."""
    if path.parent.is_dir():
        sweep_orphans(path.parent)
    if not path.is_file():
        return None
    try:
        images = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        log.warning("ignoring unreadable cache entry %s: %s", path, e)
        return None
    if images.shape != tuple(shape) or images.dtype != np.uint8:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last used: what eviction orders by
    return images


def store_entry(path: Path, images: np.ndarray) -> bool:
    """Write `images` to `path` atomically, sweep orphans, evict to the size cap. False (with a warning) when the
    cache could not be written."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.warning("could not cache decoded images at %s: %s", path, e)
        return False
    sweep_orphans(folder)
    if images.nbytes > max_cache_bytes():
        log.info("not caching %s: %d bytes exceed the cache size cap", path, images.nbytes)
        return False
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(), suffix=".npy", dir=str(folder))
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # "being written": the sweep leaves it alone
            np.save(f, images)
            f.flush()
            os.replace(tmp, path)
            tmp = None
    except OSError as e:
        log.warning("could not cache decoded images at %s: %s", path, e)
        return False
    finally:  # every exit path, Ctrl-C included, removes the partial file
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    evict(folder, max_cache_bytes(), keep=path)
    return True


def _host() -> str:
    return socket.gethostname().replace("-", "_").replace("/", "_")


def _partial_prefix() -> str:
    return f"{PARTIAL_PREFIX}{os.getpid()}@{_host()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _writer_may_be_alive(p: Path) -> bool:
    """Whether the process that created the partial file `p` may still be writing it (see the module doc)."""
    owner = PARTIAL_OWNER.match(p.name)
    if owner is None:
        return False  # no pid in the name: only the lock says whether it is being written
    pid, host = int(owner.group(1)), owner.group(2)
    if host == _host():
        return _pid_alive(pid)
    try:
        return time.time() - p.stat().st_mtime <= FOREIGN_PARTIAL_AGE_S
    except OSError:
        return True


def sweep_orphans(folder: Path) -> List[Path]:
    """Remove partial files whose writer is gone and that no process holds (left by a kill -9); the paths
    removed."""
    removed = []
    for p in sorted(folder.glob(PARTIAL_PREFIX + "*.npy")):
        if _writer_may_be_alive(p):
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live writer holds it
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    now = time.time()
    for p in sorted(folder.glob("tmp*.npy")):
        try:
            if now - p.stat().st_mtime > LEGACY_PARTIAL_AGE_S:
                p.unlink()
                removed.append(p)
        except OSError:
            pass
    if removed:
        log.info("removed %d orphaned partial cache file(s) in %s", len(removed), folder)
    return removed


def evict(folder: Path, max_bytes: int, keep: Optional[Path] = None) -> List[Path]:
    """Delete least recently used entries until the entries total at most max_bytes; the paths removed."""
    entries = []
    for p in folder.iterdir():
        if ENTRY_NAME.match(p.name) and p != keep:
            with contextlib.suppress(OSError):
                st = p.stat()
                entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    if keep is not None:
        with contextlib.suppress(OSError):
            total += keep.stat().st_size
    removed = []
    for _, size, p in sorted(entries):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
            total -= size
    if removed:
        log.info("cache over %d bytes: removed %d least recently used entr%s", max_bytes, len(removed),
                 "y" if len(removed) == 1 else "ies")
    return removed
