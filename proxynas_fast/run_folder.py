"""Output locations a run owns: checked before any work, and locked while the run writes them.

- `check_output_dir(path)` / `check_output_file(path)`: refuse, with a one-line `OutputError` naming the flag and
  the path, an output that cannot be written (a file where a folder is wanted or the reverse, a parent that is a
  file, a read-only location). Writability is tested by creating and removing a temporary file, because root
  ignores permission bits (`os.access` says yes on a read-only file system only sometimes, and always for root).
- `hold_output(path, what=...)`: an exclusive, non-blocking `fcntl.flock` on a lock file beside the output
  (`<folder>/.lock` for a folder, `<parent>/.<name>.lock` for a file) holding the holder's pid, host, start time
  and command line. A second run is refused with `OutputBusyError` naming the holder. The kernel drops the lock
  when the process dies, so kill -9 leaves no stale lock (the file may stay; it is not the lock). When `what`
  names a tool (`output_owner.FOLDER_TOOLS`, `FILE_TOOLS`), the output must be that tool's to write
  (`output_owner`: no tool writes into another tool's or run's outputs): a file is checked before its lock
  file is made, a folder under its lock, which then stamps it as the tool's.

No torch here: the CLIs check their outputs before torch loads.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

from .output_owner import (FILE_TOOLS, FOLDER_TOOLS, OWNER_FILE, OwnershipError, check_file_owner, check_folder_owner,
                           stamp_folder)


class OutputError(ValueError):
    """A one-line, user-facing problem with an output location."""


class OutputBusyError(OutputError):
    """The output is held by another live run."""


def _resolved(path) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def _probe_writable(folder: Path) -> Optional[str]:
    """None when a file can be created (and removed) in `folder`, else the OS's reason."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".proxynas-write-test.", dir=str(folder))
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _check_creatable_in(path: Path, shown, flag: str) -> None:
    """The folder that will hold `path` (or its nearest existing ancestor) is a folder we can write."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(f"{flag} {shown}: {base} is a file, not a folder")
    reason = _probe_writable(base)
    if reason:
        raise OutputError(f"{flag} {shown}: cannot write in {base} ({reason})")


def _refuse_empty(path, flag: str, what: str) -> None:
    # An empty path resolves to the current folder: outputs would land there unasked.
    if path is None or not os.fspath(path).strip():
        raise OutputError(f"{flag}: the path is empty; name a {what}")


def check_output_dir(path, *, flag: str = "--out") -> Path:
    """The resolved output folder, after checking it can be created and written. Creates nothing."""
    _refuse_empty(path, flag, "folder")
    p = _resolved(path)
    if os.path.lexists(p) and not p.is_dir():
        raise OutputError(f"{flag} {path}: exists and is not a folder")
    if p.is_dir():
        reason = _probe_writable(p)
        if reason:
            raise OutputError(f"{flag} {path}: the folder is not writable ({reason})")
        return p
    _check_creatable_in(p, path, flag)
    return p


def check_output_file(path, *, flag: str = "--out") -> Path:
    """The resolved output file, after checking it can be written (atomically: its folder must be writable)."""
    _refuse_empty(path, flag, "file")
    p = _resolved(path)
    if p.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; name a file")
    if os.path.lexists(p) and not p.is_file():
        raise OutputError(f"{flag} {path}: exists and is not a regular file")
    _check_creatable_in(p, path, flag)
    return p


def same_file(a, b) -> bool:
    """Two file options name the same input: equal strings, the same resolved path, or files of equal content
    (a run folder moved with its inputs, `x/../y` vs `y`, a trailing slash)."""
    if a == b:
        return True
    if not a or not b:
        return False
    a, b = str(a), str(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def lock_path_for(path, kind: str = "auto") -> Path:
    """Where the lock of an output lives: `<folder>/.lock`, or `<parent>/.<name>.lock` for a file."""
    p = _resolved(path)
    if _is_file_output(path, p, kind):
        return p.parent / f".{p.name}.lock"
    return p / ".lock"


def _is_file_output(given, p: Path, kind: str) -> bool:
    if kind not in ("auto", "folder", "file"):
        raise ValueError(f"kind must be 'auto', 'folder' or 'file', not {kind!r}")
    if kind != "auto":
        return kind == "file"
    if p.is_dir():
        return False
    if p.exists():
        return True
    # Not there yet: "runs/x/" or "runs/x" is a folder, "scorer.th" a file.
    return not str(given).endswith(os.sep) and bool(p.suffix)


def _holder_record(what: str) -> dict:
    return {
        "what": what,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
    }


def describe_holder(lock_file: Path) -> str:
    """'pid 123 on host, started ..., command: ...' from a lock file (best effort: it may be half written)."""
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8"))
        return (f"{info.get('what', 'a run')} (pid {info.get('pid')} on {info.get('host')}, "
                f"started {info.get('started')}, command: {info.get('command')})")
    except (OSError, ValueError, AttributeError):
        return "another process (its details are not readable)"


def _open_locked(lock_file: Path, shown, flag: str) -> int:
    """Open and flock the lock file; retry if it was replaced or removed between open and flock."""
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{flag} {shown}: cannot create the lock file {lock_file} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputBusyError(
                    f"{flag} {shown} is in use by {describe_holder(lock_file)}; wait for it to finish or choose "
                    "another output") from None
            raise
        try:
            same = os.stat(lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed it as we opened it: take the new one


@contextlib.contextmanager
def hold_output(path, *, what: str, kind: str = "auto", flag: str = "--out") -> Iterator[Path]:
    """Own the output `path` for the duration of the block; yields the resolved path.

    kind: "folder", "file", or "auto" (an existing path by its type; a new one is a file when its name has a
    suffix and does not end in a separator). A folder output is created (with its parents) if absent, and
    removed again if the block leaves it empty. Raises OutputBusyError when another live process holds it.
    """
    p = _resolved(path)
    is_file = _is_file_output(path, p, kind)
    if is_file and what in FILE_TOOLS:
        _check_owner(check_file_owner, path, what, flag)  # before a lock file is made in someone's folder
    folder = p.parent if is_file else p
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot create {folder} ({e.strerror})") from None
    lock_file = lock_path_for(path, "file" if is_file else "folder")
    try:
        fd = _open_locked(lock_file, path, flag)
    except OutputError:
        if created:
            _remove_if_empty(folder)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder_record(what)) + "\n").encode())
        if not is_file and what in FOLDER_TOOLS:
            # Under the lock: a live holder is reported as busy (above), and no one stamps it meanwhile.
            _check_owner(check_folder_owner, path, what, flag)
            stamp_folder(p, what)
        yield p
    finally:
        # Unlink before unlocking: a run waiting on this inode sees it replaced and opens the new one.
        with contextlib.suppress(OSError):
            os.unlink(lock_file)
        os.close(fd)
        if created and not is_file:
            _remove_if_empty(folder)


def _check_owner(check, path, tool: str, flag: str) -> None:
    try:
        check(path, tool, flag=flag)
    except OwnershipError as e:
        raise OutputError(str(e)) from None


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder this run created and left without outputs (its owner stamp alone is none)."""
    with contextlib.suppress(OSError):
        if os.listdir(folder) == [OWNER_FILE]:
            (folder / OWNER_FILE).unlink()
        folder.rmdir()
