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


STRESS_WRITER = """
import sys
import numpy as np
from proxynas_fast.data import image_cache
writer, writes = int(sys.argv[1]), int(sys.argv[2])
images = np.zeros((4, 8, 8, 3), np.uint8)
failed = 0
for i in range(writes):
    key = f"{writer:04x}{i:012x}"
    failed += not image_cache.store_entry(image_cache.entry_path("stress", "train", key), images)
print(failed, flush=True)
"""


WRITES = 240  # in all: enough that the race showed in every run before the fix, a few seconds


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_writers_never_delete_each_others_partial_files(cache, writers):
    # Every write sweeps the folder; a sweep used to delete a partial file another process had created but not
    # yet locked, and that writer's rename then failed (1-4% of writes with 2-4 writers).
    cache.mkdir()
    env = dict(os.environ, PROXYNAS_CACHE=str(cache), PROXYNAS_CACHE_MAX_BYTES=str(1 << 30))
    procs = [subprocess.Popen([sys.executable, "-c", STRESS_WRITER, str(w), str(WRITES // writers)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(writers)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, [err for _, err in results]
    assert [int(out) for out, _ in results] == [0] * writers, [err[-500:] for _, err in results]
    left = _entries(cache)
    assert [n for n in left if n.startswith(".partial-")] == []
    assert len([n for n in left if n.startswith("stress-train-")]) == (WRITES // writers) * writers


def test_partial_file_of_a_live_writer_is_kept_even_unlocked(cache):
    # The window the lock cannot cover: created, not yet locked. Its writer's pid is alive, so it stays.
    from proxynas_fast.data import image_cache

    cache.mkdir()
    mine = cache / f"{image_cache._partial_prefix()}abc.npy"
    mine.write_bytes(b"partial")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = cache / f"{image_cache.PARTIAL_PREFIX}{int(dead.stdout)}@{image_cache._host()}-abc.npy"
    gone.write_bytes(b"partial")
    foreign = cache / f"{image_cache.PARTIAL_PREFIX}1@elsewhere-abc.npy"
    foreign.write_bytes(b"partial")
    assert image_cache.sweep_orphans(cache) == [gone]
    os.utime(foreign, (time.time() - 7200,) * 2)  # another host's, an hour old: an orphan
    assert image_cache.sweep_orphans(cache) == [foreign]
    assert mine.exists()
