"""The decoded-image cache (proxynas_fast.data.image_cache) on real CIFAR-10 JPEGs: no partial file survives
an interrupted write, kill -9 orphans are swept by the next writer, and the cache stays under its size cap,
least recently used entries out first."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from proxynas_fast.data import load_dataset

ENTRY_BYTES = 20 * 32 * 32 * 3 + 128  # 20 images and the .npy header


def _tiny_cifar(root, cifar10_jpeg_dir, per_class=2):
    for c in sorted(p.name for p in (cifar10_jpeg_dir / "train").iterdir()):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            shutil.copy(cifar10_jpeg_dir / "train" / c / f"{i:04d}.jpg", root / "train" / c / f"{i:04d}.jpg")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("PROXYNAS_CACHE", str(folder))
    return folder


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, cifar10_jpeg_dir, cache, monkeypatch):
    root = _tiny_cifar(tmp_path / "c10", cifar10_jpeg_dir)

    def interrupted_save(f, arr, *a, **k):
        f.write(b"\x93NUMPY" + bytes(1000))  # part of the array is on disk when Ctrl-C comes
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cifar10", root, "train", download=False)
    assert _entries(cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("PROXYNAS_CACHE", str(cache))
    data = load_dataset("cifar10", root, "train", download=False)
    assert len(_entries(cache)) == 1 and data.images.shape == (20, 32, 32, 3)


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.write(fd, b"partial")
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_orphans_of_killed_writers_are_swept_live_ones_kept(tmp_path, cifar10_jpeg_dir, cache):
    cache.mkdir()
    killed, live = cache / ".partial-killed.npy", cache / ".partial-live.npy"
    writers = [subprocess.Popen([sys.executable, "-c", HOLD, str(p)], stdout=subprocess.PIPE, text=True)
               for p in (killed, live)]
    try:
        for w in writers:
            assert w.stdout.readline().strip() == "held"
        writers[0].kill()  # kill -9 mid-write: the partial file stays behind
        writers[0].wait()
        legacy = cache / "tmpab12cd.npy"  # what the earlier cache writer left (no lock): swept once old
        legacy.write_bytes(b"partial")
        os.utime(legacy, (time.time() - 7200,) * 2)
        recent_legacy = cache / "tmpzz99.npy"
        recent_legacy.write_bytes(b"partial")
        load_dataset("cifar10", _tiny_cifar(tmp_path / "c10", cifar10_jpeg_dir), "train", download=False)
        left = _entries(cache)
        assert ".partial-killed.npy" not in left and "tmpab12cd.npy" not in left
        assert ".partial-live.npy" in left and "tmpzz99.npy" in left  # may still be written by someone
        assert len([n for n in left if n.startswith("cifar10-train-")]) == 1
        orphan = cache / ".partial-another.npy"  # a run that only reads the cache sweeps too
        orphan.write_bytes(b"partial")
        load_dataset("cifar10", tmp_path / "c10", "train", download=False)
        assert not orphan.exists() and ".partial-live.npy" in _entries(cache)
    finally:
        for w in writers:
            w.kill()
            w.wait()


def test_cache_is_bounded_least_recently_used_out_first(tmp_path, cifar10_jpeg_dir, cache, monkeypatch):
    monkeypatch.setenv("PROXYNAS_CACHE_MAX_BYTES", str(int(2.5 * ENTRY_BYTES)))
    roots = [_tiny_cifar(tmp_path / f"c10-{i}", cifar10_jpeg_dir) for i in range(3)]

    def entry_of(root):
        before = set(_entries(cache))
        load_dataset("cifar10", root, "train", download=False)
        return (set(_entries(cache)) - before).pop() if set(_entries(cache)) - before else None

    a = entry_of(roots[0])
    b = entry_of(roots[1])
    assert (cache / a).stat().st_size == ENTRY_BYTES
    old = time.time() - 1000
    os.utime(cache / a, (old, old))
    os.utime(cache / b, (old + 1, old + 1))
    load_dataset("cifar10", roots[0], "train", download=False)  # a cache hit: `a` is now the most recent
    assert set(_entries(cache)) == {a, b}
    c = entry_of(roots[2])
    assert set(_entries(cache)) == {a, c}  # b, least recently used, went out
    monkeypatch.setenv("PROXYNAS_CACHE_MAX_BYTES", str(ENTRY_BYTES // 2))
    shutil.rmtree(cache)
    load_dataset("cifar10", roots[0], "train", download=False)  # bigger than the whole cap: not cached
    assert _entries(cache) == []
