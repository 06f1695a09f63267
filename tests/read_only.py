"""A folder that is really read-only, also for root (who ignores permission bits): a read-only tmpfs mount
when running as root (populated first, then remounted read-only), chmod 0555 otherwise; the test is skipped
where neither is possible. Usage: `with read_only_folder(tmp_path / "ro", populate=fn) as folder: ...`."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only_folder(path: Path, populate=None):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        if populate:
            populate(path)
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)
        return
    if not _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)):
        pytest.skip("running as root and cannot mount a tmpfs to make a read-only folder")
    try:
        if populate:
            populate(path)
        if not _mount("-o", "remount,ro", str(path)):
            pytest.skip("cannot remount the tmpfs read-only")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
