"""The decode-once image store (loaders/image_store.py) and its loader backend, on real sample pictures: reuse,
resume, files that changed, a failing write (a full disk, also a real one through RLIMIT_FSIZE in the CLI), an
undecodable picture, DALI asked for but missing."""
from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import proxynas_fast.loaders.image_store as image_store
from proxynas_fast.data import load_dataset
from proxynas_fast.loaders import build_imagenet_loader
from proxynas_fast.loaders.image_store import ImageStoreError, decode_for_store, open_store
from proxynas_fast.loaders.imagenet import BACKENDS, ImageFileError
from proxynas_fast.search.config import LOADER_BACKEND_NAMES

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
SIZE = 48


@pytest.fixture(scope="module")
def sample_files(imagenet_sample_dir):
    dataset = load_dataset("imagenet", imagenet_sample_dir, "train")
    return dataset.files, [int(label) for label in dataset.labels]


@pytest.fixture
def copies(sample_files, tmp_path):
    """40 sample pictures copied (so a test may change them), greyscale ones included."""
    files, _ = sample_files
    grey = [f for f in files if Image.open(f).mode != "RGB"][:2]
    chosen = grey + [f for f in files[:40] if f not in grey][:40 - len(grey)]
    folder = tmp_path / "pictures"
    folder.mkdir()
    out = []
    for i, path in enumerate(chosen):
        target = folder / f"{i:03d}.JPEG"
        shutil.copy2(path, target)
        out.append(str(target))
    return out


def test_backend_names_agree():
    assert set(LOADER_BACKEND_NAMES) == set(BACKENDS)


def test_store_holds_each_picture_decoded_once_and_is_reused(copies, tmp_path):
    store, build = open_store(copies, SIZE, root=tmp_path / "s", threads=2, shard_images=16)
    assert (build.decoded, build.reused) == (40, 0)
    assert sorted(p.name for p in store.folder.glob("shard-*.npy")) == [f"shard-0000{i}.npy" for i in range(3)]
    positions = [39, 0, 17, 16, 5, 17]
    expected = np.stack([decode_for_store(copies[i], SIZE) for i in positions])
    assert np.array_equal(store.gather(positions), expected)
    assert store.gather([1]).shape == (1, SIZE, SIZE, 3)
    again, build = open_store(copies, SIZE, root=tmp_path / "s", threads=2, shard_images=16)
    assert (build.decoded, build.reused) == (0, 40) and again.folder == store.folder
    other, build = open_store(copies, SIZE + 16, root=tmp_path / "s", shard_images=16)  # the size is in the key
    assert other.folder != store.folder and build.decoded == 40


def test_changed_files_rebuild_only_their_shard_with_a_message(copies, tmp_path, caplog):
    store, _ = open_store(copies, SIZE, root=tmp_path / "s", shard_images=16)
    shutil.copy2(copies[0], copies[20])  # other content, other size and time: shard 1 is stale
    stamp = os.stat(copies[20])
    os.utime(copies[20], ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    caplog.set_level("WARNING", logger="proxynas_fast.loaders")
    store, build = open_store(copies, SIZE, root=tmp_path / "s", shard_images=16)
    assert (build.decoded, build.reused) == (16, 24)
    assert "was built from other files" in caplog.text and copies[20] in caplog.text
    assert np.array_equal(store.gather([20]), store.gather([0]))
    index = json.loads((store.folder / "index.json").read_text())
    index["format"] = "something-else"  # a store of another format is not taken
    (store.folder / "index.json").write_text(json.dumps(index))
    _, build = open_store(copies, SIZE, root=tmp_path / "s", shard_images=16)
    assert build.reused == 40 and build.decoded == 0  # the shards' own manifests still match: nothing decoded


def test_a_failing_write_keeps_finished_shards_and_leaves_no_index(copies, tmp_path, monkeypatch):
    real_save = np.save
    saved = []

    def save_then_fill_disk(f, array):
        if saved:  # the second shard: half written, then the disk is full
            f.write(b"\x93NUMPY" + b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(1)
        real_save(f, array)

    monkeypatch.setattr(image_store.np, "save", save_then_fill_disk)
    with pytest.raises(ImageStoreError, match=r"shard-00001\.npy \(disk full\): No space left on device") as e:
        open_store(copies, SIZE, root=tmp_path / "s", shard_images=16)
    assert "\n" not in str(e.value)
    folder = next((tmp_path / "s").glob("imagenet-*px-*[0-9a-f]"))
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.json", "shard-00000.npy"]  # no partial, no index
    monkeypatch.setattr(image_store.np, "save", real_save)
    store, build = open_store(copies, SIZE, root=tmp_path / "s", shard_images=16)
    assert (build.decoded, build.reused) == (24, 16)
    assert np.array_equal(store.gather([3, 30]), np.stack([decode_for_store(copies[i], SIZE) for i in (3, 30)]))


def test_not_enough_free_space_is_refused_before_decoding(copies, tmp_path, monkeypatch):
    monkeypatch.setattr(image_store.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    monkeypatch.setattr(image_store, "decode_for_store", lambda *a: pytest.fail("decoded despite the full disk"))
    with pytest.raises(ImageStoreError, match="needs 0.00 GB more and its disk has 0.00 GB free"):
        open_store(copies, SIZE, root=tmp_path / "s")


def test_an_undecodable_picture_is_named(copies, tmp_path):
    Path(copies[7]).write_bytes(Path(copies[7]).read_bytes()[:300])  # a truncated JPEG
    with pytest.raises(ImageFileError, match=f"cannot decode image file {copies[7]}: "):
        open_store(copies, SIZE, root=tmp_path / "s", shard_images=16)
    store, build = open_store(copies, SIZE, root=tmp_path / "s", shard_images=16, skip_bad=True)
    assert list(store.unreadable) == [copies[7]]


def test_store_loader_batches(copies, tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYNAS_IMAGE_STORE", str(tmp_path / "s"))
    labels = list(range(40))
    common = dict(image_size=64, store_size=SIZE, seed=3, backend="store")
    train = build_imagenet_loader(copies, labels, 16, drop_last=True, **common)
    assert train.backend == "store" and train.store_build.decoded == 40 and len(train) == 2
    first = [(x.clone(), y.clone()) for x, y in train]
    assert [tuple(x.shape) for x, _ in first] == [(16, 3, 64, 64)] * 2
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(train.rank_positions()[:32])
    again = build_imagenet_loader(copies, labels, 16, drop_last=True, **common)
    assert again.store_build.decoded == 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    again.set_epoch(1)
    assert not torch.equal(next(iter(again))[0], first[0][0])
    # eval: the centre 224/256 of the stored square resized to 64, normalised (PIL's bilinear resize as reference)
    evaluate = build_imagenet_loader(copies, labels, 8, train=False, **common)
    x, y = next(iter(evaluate))
    assert y.tolist() == list(range(8))
    side = SIZE * 224 / 256
    start = (SIZE - side) / 2
    for i in range(8):
        square = Image.fromarray(decode_for_store(copies[i], SIZE))
        crop = np.array(square.resize((64, 64), Image.Resampling.BILINEAR, box=(start, start, start + side,
                                                                                   start + side)), dtype=np.float32)
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        reference = torch.from_numpy(((crop / 255 - mean) / std).astype(np.float32)).permute(2, 0, 1)
        assert (x[i] - reference)[:, 2:-2, 2:-2].abs().mean().item() < 0.02


def _run_search(args, tmp_path, env_extra=None, preexec=None, code=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PROXYNAS_IMAGE_STORE=str(tmp_path / "store"))
    env.update(env_extra or {})
    prefix = [sys.executable, "-c", code] if code else [sys.executable, "-m", "proxynas_fast.search"]
    return subprocess.run(prefix + args, capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=300,
                          cwd=tmp_path)


def _imagenet_folder(copies, tmp_path) -> Path:
    """An ImageNet folder (train/<wnid>/*.JPEG) of the 40 copies in two classes."""
    root = tmp_path / "imagenet"
    for i, path in enumerate(copies):
        folder = root / "train" / ("n01440764" if i % 2 else "n01443537")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, folder / Path(path).name)
    return root


SEARCH = ["--dataset", "imagenet", "--selection", "random", "--count", "32", "--epochs", "1", "--batch-size", "8",
          "--layers", "3", "--init-channels", "4", "--image-size", "32", "--store-size", "64", "--device", "cpu",
          "--no-progress"]


def test_cli_bad_picture_and_full_disk_are_one_line_exit_2(copies, tmp_path):
    root = _imagenet_folder(copies, tmp_path)
    bad = sorted((root / "train").rglob("*.JPEG"))[5]
    original = bad.read_bytes()
    bad.write_bytes(original[:300])
    run = _run_search(SEARCH + ["--data-dir", str(root), "--count", "40", "--out", str(tmp_path / "o1")], tmp_path)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [run.stderr.strip().splitlines()[-1]]
    assert run.stderr.startswith(f"error: cannot decode image file {bad}: ")
    bad.write_bytes(original)

    def limit_file_size():  # the run's files before its loaders fit in 150 kB, a shard of 16 64-px squares (197 kB) does not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    run = _run_search(SEARCH + ["--data-dir", str(root), "--out", str(tmp_path / "o2")], tmp_path,
                      preexec=limit_file_size)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write image store file "), run.stderr[-2000:]
    assert "shard-00000.npy (short write: is the disk full?)" in lines[0] and "next run resumes" in lines[0]
    assert not list((tmp_path / "store").rglob("index.json")) and not list((tmp_path / "store").rglob(".partial-*"))


def test_cli_dali_asked_for_but_missing(copies, tmp_path):
    root = _imagenet_folder(copies[:4], tmp_path)
    code = ("import sys; sys.modules['nvidia.dali'] = None; from proxynas_fast.search.__main__ import main; "
            "sys.exit(main())")
    run = _run_search(["--dataset", "imagenet", "--data-dir", str(root), "--loader-backend", "dali",
                       "--selection", "random", "--count", "4", "--out", str(tmp_path / "o")], tmp_path, code=code)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("error: --loader-backend dali: NVIDIA DALI does not import")
    assert "Traceback" not in run.stderr and not (tmp_path / "o" / "log.jsonl").exists()
