"""build_imagenet_loader on the real ImageNet sample (64 files), DALI (CPU) and PIL backends:
output format, reading exactly the selected files, greyscale input, bad files, sharding, order."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import proxynas_fast.loaders.imagenet_pil as imagenet_pil
from proxynas_fast.loaders.imagenet import LoaderBackendError
from devices import needs_cuda
from proxynas_fast.data import load_dataset
from proxynas_fast.loaders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFileError,
    ImageNetLoaderOptions,
    build_imagenet_loader,
    dali_available,
    select_files,
)

# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")

needs_dali = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")
BACKENDS = [pytest.param("dali", marks=needs_dali), "pil"]
SMALL = 64  # image_size for tests that do not look at the 224 format


@pytest.fixture(scope="module")
def imagenet(imagenet_sample_dir):
    return load_dataset("imagenet", data_dir=imagenet_sample_dir, split="train", download=False)


@pytest.fixture(scope="module")
def greyscale_indices(imagenet):
    found = []
    for i, path in enumerate(imagenet.files):
        with Image.open(path) as image:
            if image.mode == "L":
                found.append(i)
    assert len(found) == 23
    return found


@pytest.fixture(scope="module")
def proxy(imagenet, greyscale_indices):
    """A 64-example proxy: every 16th index plus 4 greyscale ones (what a proxy index file holds)."""
    indices = np.unique(np.concatenate([np.arange(0, 1000, 16)[:60], greyscale_indices[:4]]))
    assert len(indices) == 64
    return indices


def collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def normalised_bounds():
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("train", [True, False])
def test_batches_are_normalised_224_nchw(imagenet, proxy, backend, train):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy)
    loader = build_imagenet_loader(files, labels, 32, train=train, backend=backend, num_threads=2)
    assert loader.backend == backend and len(loader) == 2
    x, y = collect(loader)
    assert x.shape == (64, 3, 224, 224) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and sorted(y.tolist()) == sorted(labels)
    low, high = normalised_bounds()
    assert torch.all(x >= low - 1e-4) and torch.all(x <= high + 1e-4)
    # Real photos: per-channel statistics of normalised ImageNet pixels are near 0 mean, unit std.
    assert x.mean().abs() < 0.5 and 0.5 < x.std() < 1.5


@needs_dali
def test_eval_outputs_of_both_backends_agree(imagenet, proxy):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:16])
    outputs = [collect(build_imagenet_loader(files, labels, 16, train=False, backend=b)) for b in ("dali", "pil")]
    assert torch.equal(outputs[0][1], outputs[1][1])
    # Same resize 256 + centre crop 224 + normalisation; the resamplers differ slightly and the crop
    # offset can differ by a pixel (round-half-even vs half-up).  A swapped channel or a wrong crop
    # gives differences near 1.
    difference = (outputs[0][0] - outputs[1][0]).abs().mean().item()
    assert difference < 0.12


@needs_dali
def test_dali_reader_gets_exactly_the_selection(imagenet, proxy, monkeypatch):
    import nvidia.dali.fn.readers as readers

    given = []
    real_reader = readers.file

    def spy(*args, **kwargs):
        given.append(list(kwargs["files"]))
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(readers, "file", spy)
    files, labels = select_files(imagenet.files, imagenet.labels, proxy)
    loader = build_imagenet_loader(files, labels, 32, backend="dali", image_size=SMALL)
    assert loader.files == files
    y = collect(loader)[1]
    assert len(given) == 1 and sorted(given[0]) == sorted(files) and given[0] == loader.reader_files
    assert sorted(y.tolist()) == sorted(labels)


def test_pil_opens_only_the_selection(imagenet, proxy, monkeypatch):
    opened = []
    real_open = Image.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:24])
    loader = build_imagenet_loader(files, labels, 8, backend="pil", num_threads=0, image_size=SMALL)
    collect(loader)
    assert set(opened) == set(files)
    assert len(opened) == 2 * len(files)  # header check + one decode per file


@pytest.mark.parametrize("backend", BACKENDS)
def test_greyscale_images_become_three_equal_channels(imagenet, greyscale_indices, backend):
    files, labels = select_files(imagenet.files, imagenet.labels, greyscale_indices[:8])
    x, _ = collect(build_imagenet_loader(files, labels, 8, train=False, backend=backend, image_size=SMALL))
    assert x.shape == (8, 3, SMALL, SMALL)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = x * std + mean  # back to [0, 1]
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=2e-3)
    assert torch.allclose(pixels[:, 0], pixels[:, 2], atol=2e-3)


@pytest.fixture()
def folder_with_bad_files(imagenet, tmp_path):
    """Six good JPEGs, one file of garbage bytes, one JPEG cut to a third of its length."""
    good = []
    for i, index in enumerate(range(0, 60, 10)):
        target = tmp_path / f"good_{i}.JPEG"
        shutil.copyfile(imagenet.files[index], target)
        good.append(str(target))
    garbage = tmp_path / "garbage.JPEG"
    garbage.write_bytes(bytes(range(256)) * 40)
    data = (tmp_path / "good_0.JPEG").read_bytes()
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(data[: len(data) // 3])
    return good, str(garbage), str(truncated)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_file_raises_error_naming_it(folder_with_bad_files, backend):
    good, garbage, _ = folder_with_bad_files
    files = good[:3] + [garbage] + good[3:]
    with pytest.raises(ImageFileError, match="garbage.JPEG") as raised:
        build_imagenet_loader(files, range(len(files)), 4, backend=backend, image_size=SMALL)
    assert raised.value.path == garbage


@pytest.mark.parametrize("backend", BACKENDS)
def test_file_failing_while_decoding_is_named(folder_with_bad_files, backend):
    good, _, truncated = folder_with_bad_files
    files = good + [truncated]
    loader = build_imagenet_loader(files, range(len(files)), 4, backend=backend, image_size=SMALL,
                                   num_threads=1)  # its header is intact: passes the default check
    with pytest.raises(ImageFileError, match="truncated.JPEG"):
        collect(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_bad_images_logs_and_drops_them(folder_with_bad_files, backend, caplog):
    good, garbage, truncated = folder_with_bad_files
    files = [garbage] + good + [truncated]
    with caplog.at_level(logging.WARNING, logger="proxynas_fast.loaders"):
        loader = build_imagenet_loader(files, range(len(files)), 4, backend=backend, image_size=SMALL,
                                       skip_bad_images=True)
    assert sorted(loader.skipped_files) == sorted([garbage, truncated])
    assert loader.files == good
    logged = caplog.text
    assert "garbage.JPEG" in logged and "truncated.JPEG" in logged
    x, y = collect(loader)
    assert x.shape[0] == len(good) and sorted(y.tolist()) == list(range(1, len(good) + 1))


def test_pil_worker_skips_a_file_that_breaks_after_the_check(folder_with_bad_files, caplog):
    good, _, truncated = folder_with_bad_files
    files = good + [truncated]
    loader = build_imagenet_loader(files, range(len(files)), 4, backend="pil", image_size=SMALL, num_threads=0,
                                   skip_bad_images=True, check_files="none")
    with caplog.at_level(logging.WARNING, logger="proxynas_fast.loaders"):
        x, y = collect(loader)
    assert x.shape[0] == len(good) and "truncated.JPEG" in caplog.text


@needs_dali
def test_dali_failure_without_a_name_is_traced_to_the_file(folder_with_bad_files):
    from proxynas_fast.loaders.imagenet_dali import find_bad_files

    good, _, truncated = folder_with_bad_files
    bad = find_bad_files(good + [truncated], "nvImageCodec failure: '#4'", num_threads=2)
    assert [path for path, _ in bad] == [truncated]
    named = find_bad_files(good + [truncated], f"Failed to decode sample #1 : {truncated}\nmore", num_threads=2)
    assert named == [(truncated, f"Failed to decode sample #1 : {truncated}")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_read_disjoint_halves_in_the_planned_order(imagenet, proxy, backend):
    files, _ = select_files(imagenet.files, imagenet.labels, proxy)
    ids = list(range(len(files)))  # a label per file reveals which files a rank read
    shards = []
    for rank in range(2):
        loader = build_imagenet_loader(files, ids, 16, backend=backend, rank=rank, world_size=2, seed=5,
                                       image_size=SMALL)
        loader.set_epoch(1)
        assert len(loader) == 2
        y = collect(loader)[1].tolist()
        assert y == [files.index(f) for f in loader.rank_files()]  # reads follow the seeded plan
        shards.append(set(y))
    assert len(shards[0]) == len(shards[1]) == 32
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_last_yields_only_full_batches(imagenet, proxy, backend):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:20])
    loader = build_imagenet_loader(files, labels, 8, backend=backend, drop_last=True, image_size=SMALL)
    assert len(loader) == 2
    assert [y.shape[0] for _, y in loader] == [8, 8]


def test_epoch_order_is_seeded_and_resumable(imagenet, proxy):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy)
    make = lambda seed: build_imagenet_loader(files, labels, 16, backend="pil", seed=seed, check_files="none")
    a, b = make(1), make(1)
    assert a.rank_files(0) == b.rank_files(0)
    assert a.rank_files(0) != a.rank_files(1) and a.rank_files(0) != make(2).rank_files(0)
    assert sorted(a.rank_files(3)) == sorted(files)
    a.set_epoch(7)
    b.load_state_dict(a.state_dict())
    assert b.epoch == 7 and b.rank_files() == a.rank_files()
    evaluation = build_imagenet_loader(files, labels, 16, train=False, backend="pil", check_files="none")
    assert evaluation.rank_files(0) == evaluation.rank_files(5) == files  # eval: no shuffling


def test_pil_batches_do_not_depend_on_worker_count(imagenet, proxy):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:12])
    runs = [collect(build_imagenet_loader(files, labels, 6, backend="pil", num_threads=n, seed=3, image_size=SMALL))
            for n in (0, 2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_auto_backend_and_argument_errors(imagenet, proxy, monkeypatch):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:4])
    expected = "dali" if dali_available() else "pil"
    assert build_imagenet_loader(files, labels, 2, check_files="none").backend == expected
    monkeypatch.setattr("proxynas_fast.loaders.imagenet.dali_available", lambda: False)
    assert build_imagenet_loader(files, labels, 2, check_files="none").backend == "pil"
    monkeypatch.setattr("proxynas_fast.loaders.imagenet.dali_missing", lambda: "ModuleNotFoundError: no nvidia")
    with pytest.raises(LoaderBackendError, match="DALI does not import .*use --loader-backend store or pil"):
        build_imagenet_loader(files, labels, 2, backend="dali")
    with pytest.raises(ValueError, match="backend"):
        build_imagenet_loader(files, labels, 2, backend="opencv")
    with pytest.raises(ValueError, match="differ in length"):
        build_imagenet_loader(files, labels[:-1], 2)
    with pytest.raises(ValueError, match="empty"):
        build_imagenet_loader([], [], 2)
    with pytest.raises(ValueError, match="indices"):
        select_files(files, labels, [0, 4])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            build_imagenet_loader(files, labels, 2, device="cuda")


def test_a_loader_backend_registered_later_is_accepted(imagenet, proxy, request):
    """Like every registry: a backend added to LOADER_BACKENDS after import is found by name."""
    from proxynas_fast.loaders import imagenet as factory

    factory.LOADER_BACKENDS.register("pil_copy", obj=factory.PilImageNetLoader)
    request.addfinalizer(lambda: factory.LOADER_BACKENDS.unregister("pil_copy"))
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:4])
    assert isinstance(build_imagenet_loader(files, labels, 2, backend="pil_copy", check_files="none"),
                      factory.PilImageNetLoader)
    with pytest.raises(ValueError, match="pil_copy"):  # the error lists it too
        build_imagenet_loader(files, labels, 2, backend="opencv")


def test_missing_file_is_named(imagenet, tmp_path):
    files = [imagenet.files[0], str(tmp_path / "n0000_missing.JPEG")]
    with pytest.raises(ImageFileError, match="n0000_missing.JPEG"):
        build_imagenet_loader(files, [0, 1], 2, backend="pil")


def test_random_resized_crop_box_follows_its_ranges():
    rng = np.random.default_rng(0)
    boxes = [imagenet_pil.random_resized_crop_box(500, 375, rng) for _ in range(2000)]
    areas = np.array([w * h / (500 * 375) for _, _, w, h in boxes])
    ratios = np.array([w / h for _, _, w, h in boxes])
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 - 0.02 and ratios.max() <= 4 / 3 + 0.02
    assert all(0 <= left and left + w <= 500 and 0 <= top and top + h <= 375 for left, top, w, h in boxes)
    assert areas.max() > 0.9 and areas.min() < 0.1  # the whole range is used


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_output_lands_on_the_device(imagenet, proxy, backend):
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:16])
    x, y = next(iter(build_imagenet_loader(files, labels, 8, device="cuda", backend=backend)))
    assert x.is_cuda and y.is_cuda and x.shape == (8, 3, 224, 224) and y.dtype == torch.int64


def test_pil_worker_failure_is_one_line_naming_the_file(folder_with_bad_files):
    """A file failing inside a DataLoader worker: the worker's traceback, which torch puts into the message,
    is dropped; the error is the one line the worker raised, and still names the file."""
    good, _, truncated = folder_with_bad_files
    loader = build_imagenet_loader(good + [truncated], range(len(good) + 1), 4, backend="pil", image_size=SMALL,
                                   num_threads=2)
    with pytest.raises(ImageFileError) as raised:
        collect(loader)
    message = str(raised.value)
    assert message.startswith(f"cannot decode image file {truncated}: ") and "\n" not in message, message
    assert raised.value.path == truncated


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_order_and_sharding_are_pinned(imagenet, proxy, backend, drop_last):
    """The exact files each of 3 ranks reads in one (seed, epoch): a change to the shared epoch rules
    (`sharding.ShardedEpochs`: permutation, wrap-around padding, drop_last cut, rank r taking r, r + 3, ...)
    or to how a backend follows them fails here.  test_loaders_resident pins the same global order."""
    files, _ = select_files(imagenet.files, imagenet.labels, proxy[:11])
    pinned = [[2, 5, 7], [1, 0, 3], [10, 6, 8]] if drop_last else [[2, 5, 7, 4], [1, 0, 3, 9], [10, 6, 8, 2]]
    for rank in range(3):
        loader = build_imagenet_loader(files, range(11), 2, backend=backend, seed=5, rank=rank, world_size=3,
                                       drop_last=drop_last, image_size=SMALL, num_threads=1, check_files="none")
        loader.set_epoch(2)
        assert loader.rank_files() == [files[i] for i in pinned[rank]]
        assert collect(loader)[1].tolist() == (pinned[rank][:2] if drop_last else pinned[rank])
        assert loader.state_dict() == {"epoch": 2, "seed": 5, "world_size": 3, "num_files": 11}


def test_options_dataclass_equals_the_keyword_call(imagenet, proxy):
    """The keyword call builds `ImageNetLoaderOptions`; the loader classes take the options directly."""
    files, labels = select_files(imagenet.files, imagenet.labels, proxy[:6])
    loader = build_imagenet_loader(files, labels, 4, backend="pil", seed=2, image_size=SMALL, num_threads=0)
    assert loader.options == ImageNetLoaderOptions(batch_size=4, seed=2, image_size=SMALL, num_threads=0)
    direct = imagenet_pil.PilImageNetLoader(files, labels, loader.options)
    first, second = collect(loader), collect(direct)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="check_files"):
        ImageNetLoaderOptions(batch_size=4, check_files="full")
    with pytest.raises(TypeError, match="num_workers"):
        build_imagenet_loader(files, labels, 4, num_workers=2)
