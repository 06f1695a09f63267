"""Decoding only what is used (issue 18): `load_dataset(..., lazy=True)` on the CIFAR-10 JPEG folders decodes
only the examples asked for, with the same pixels as the eager load; a search that selects from an entropy file
decodes only its proxy and gives the same log, genotype and alphas as one that decodes the whole training set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from proxynas_fast.data import ArrayDataset, DatasetError, LazyImageDataset, load_dataset
from proxynas_fast.data import lazy as lazy_module
from proxynas_fast.search import data_setup, proxy_prep, resolve_config, run_search
from proxynas_fast.search.outputs import read_log
from proxynas_fast.train.config import TrainConfig
from proxynas_fast.train.data import build_loaders as build_train_loaders
from test_image_cache import _tiny_cifar, cache  # noqa: F401  (a fixture: a fresh cache folder)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def decoded(monkeypatch):
    """The number of files of each decode (cache misses only), in call order."""
    calls = []
    real = lazy_module.decode_images

    def counting(files, size, *args, **kwargs):
        calls.append(len(files))
        return real(files, size, *args, **kwargs)

    monkeypatch.setattr(lazy_module, "decode_images", counting)
    return calls


def test_lazy_subset_decodes_only_those_files_with_the_eager_pixels(tmp_path, cifar10_jpeg_dir, cache, decoded):
    root = _tiny_cifar(tmp_path / "c10", cifar10_jpeg_dir, per_class=3)
    lazy = load_dataset("cifar10", root, "train", download=False, lazy=True)
    assert isinstance(lazy, LazyImageDataset) and len(lazy) == 30 and decoded == []
    picked = [7, 2, 19, 29]
    sub = lazy.subset(picked)
    assert isinstance(sub, ArrayDataset) and decoded == [4]
    assert [np.load(p).shape for p in cache.iterdir()] == [(4, 32, 32, 3)]  # the subset's own cache entry
    np.testing.assert_array_equal(lazy.images_of(picked), sub.images)
    assert decoded == [4]  # the second ask is a cache hit
    eager = load_dataset("cifar10", root, "train", download=False)
    assert isinstance(eager, ArrayDataset) and decoded == [4, 30]
    np.testing.assert_array_equal(sub.images, eager.images[picked])
    np.testing.assert_array_equal(sub.labels, eager.labels[picked])
    assert (sub.mean, sub.std, sub.classes, sub.source) == (eager.mean, eager.std, eager.classes, eager.source)


def test_one_cache_entry_whatever_the_spelling_of_the_data_folder(tmp_path, cifar10_jpeg_dir, cache, decoded,
                                                                   monkeypatch):
    """`../shared/...`, `/abs/shared/...` and a symlinked folder name the same files: one decode, one entry."""
    root = _tiny_cifar(tmp_path / "data" / "c10", cifar10_jpeg_dir, per_class=2)
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    spellings = [root, "../data/c10", tmp_path / "link" / "c10", "../link/c10"]
    images = [load_dataset("cifar10", str(r), "train", download=False, lazy=True).subset([1, 5, 8]).images
              for r in spellings]
    assert decoded == [3] and len(list(cache.iterdir())) == 1
    for other in images[1:]:
        np.testing.assert_array_equal(other, images[0])


def test_a_corrupt_jpeg_is_named_when_selected_and_not_read_otherwise(tmp_path, cifar10_jpeg_dir, cache):
    root = _tiny_cifar(tmp_path / "c10", cifar10_jpeg_dir, per_class=3)
    lazy = load_dataset("cifar10", root, "train", download=False, lazy=True)
    bad = 4
    with open(lazy.files[bad], "r+b") as f:
        f.write(b"not a jpeg")
    assert lazy.subset([0, 1, 5, 29]).images.shape == (4, 32, 32, 3)
    with pytest.raises(DatasetError) as err:
        lazy.subset([0, bad])
    message = str(err.value)
    assert lazy.files[bad] in message and "cannot decode" in message and "\n" not in message
    with pytest.raises(DatasetError, match="must lie in"):
        lazy.images_of([30])


def test_proxy_examples_decode_the_halves_of_a_lazy_set_and_keep_their_order(tmp_path, cifar10_jpeg_dir, cache,
                                                                             decoded):
    root = _tiny_cifar(tmp_path / "c10", cifar10_jpeg_dir, per_class=3)
    lazy = load_dataset("cifar10", root, "train", download=False, lazy=True)
    eager = load_dataset("cifar10", root, "train", download=False)
    split = proxy_prep.ProxySplit(np.array([1, 4, 8, 20]), np.array([4, 20]), np.array([1, 8]))
    proxy, local = data_setup.proxy_examples(lazy, split)
    assert decoded == [30, 4] and len(proxy) == 4  # the eager load, then only the four
    for part, here in ((split.weights, local.weights), (split.arch, local.arch)):
        np.testing.assert_array_equal(proxy.images[here], eager.images[part])
        np.testing.assert_array_equal(proxy.labels[here], eager.labels[part])
    everything = proxy_prep.ProxySplit(np.arange(30), np.arange(0, 30, 2), np.arange(1, 30, 2))
    whole, same = data_setup.proxy_examples(lazy, everything)  # the whole set: decoded (a cache hit here)
    assert isinstance(whole, ArrayDataset) and same is everything and decoded == [30, 4]
    np.testing.assert_array_equal(whole.images, eager.images)


def _search(cifar10_jpeg_dir, entropy_file, out):
    config = resolve_config(dict(
        dataset="cifar10", data_dir=str(cifar10_jpeg_dir), entropy_file=str(entropy_file), selection="p1",
        count=64, batch_size=8, layers=3, init_channels=4, epochs=2, seed=3, device="cpu", progress=False,
        download=False, out=str(out)))
    run_search(config)
    epochs = [{k: v for k, v in r.items() if not k.endswith("_seconds")}
              for r in read_log(out / "log.jsonl") if r["event"] == "epoch"]
    genotype = json.loads((out / "genotype.json").read_text())
    return epochs, genotype, torch.load(out / "alphas.pt"), (out / "proxy.txt").read_text()


def test_search_decodes_only_its_proxy_and_matches_a_full_decode(cifar10_jpeg_dir, reference_entropy_dir, tmp_path,
                                                                 monkeypatch, decoded):
    entropy_file = reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"
    sizes = []
    real = LazyImageDataset._decode_cached
    monkeypatch.setattr(LazyImageDataset, "_decode_cached", lambda self, files: sizes.append(len(files))
                        or real(self, files))
    with monkeypatch.context() as m:  # forced to decode the whole training set (from the user's cache, if there)
        m.setattr(data_setup, "needs_all_images", lambda config: True)
        full = _search(cifar10_jpeg_dir, entropy_file, tmp_path / "full_decode")
    assert sizes == [50000]
    sizes.clear()
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path / "cache"))  # a fresh cache: the proxy is decoded
    decoded.clear()
    lazy = _search(cifar10_jpeg_dir, entropy_file, tmp_path / "lazy")
    assert sizes == [64] and decoded == [64]
    assert [np.load(p).shape for p in (tmp_path / "cache").iterdir()] == [(64, 32, 32, 3)]
    assert lazy[0] == full[0] and lazy[1] == full[1] and lazy[3] == full[3]
    for kind, tensor in full[2]["arch"].items():
        assert torch.equal(lazy[2]["arch"][kind], tensor), kind


def test_the_pipeline_decodes_everything_only_when_it_scores_the_training_set(cifar10_jpeg_dir, tmp_path):
    base = dict(dataset="cifar10", data_dir=str(cifar10_jpeg_dir), out=str(tmp_path / "run"), device="cpu")
    entropy = resolve_config(dict(base, entropy_file="e.txt", selection="p1"))
    scored = resolve_config(dict(base, scorer_checkpoint="scorer.pt", selection="p1"))
    random = resolve_config(dict(base, selection="random"))
    assert [data_setup.needs_all_images(c) for c in (entropy, scored, random)] == [False, True, False]


def test_training_with_limits_decodes_only_the_examples_it_uses(cifar10_jpeg_dir, tmp_path, cache, decoded):
    cfg = TrainConfig(dataset="cifar10", arch="resnet20", out=str(tmp_path / "train"),
                      data_dir=str(cifar10_jpeg_dir), train_limit=40, test_limit=20, batch_size=8)
    train, test, info = build_train_loaders(cfg, torch.device("cpu"))
    assert decoded == [40, 20] and info["train_examples"] == 40 and info["test_examples"] == 20
    assert train.num_examples == 40 and test.num_examples == 20
