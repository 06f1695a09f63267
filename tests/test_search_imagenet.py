"""The ImageNet path end to end on CPU: the real 1,000-image sample, random selection (there is no ImageNet
entropy list), the ImageNet search network at 64x64, and the ImageNet loader (the default image store) reading
exactly the selected files."""
from __future__ import annotations

import numpy as np
import pytest

from proxynas_fast.darts import NetworkImageNetSearch, get_genotype
from proxynas_fast.data import load_dataset
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.search import resolve_config, run_search
from proxynas_fast.search.outputs import read_log


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: one intra-op thread


def test_imagenet_search_reads_only_the_selected_files(imagenet_sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYNAS_IMAGE_STORE", str(tmp_path / "store"))  # a fresh store: its decode is timed
    out = tmp_path / "imagenet"
    config = resolve_config(dict(dataset="imagenet", data_dir=str(imagenet_sample_dir), selection="random",
                                 count=64, epochs=1, batch_size=8, layers=3, init_channels=4, image_size=64,
                                 seed=1, device="cpu", progress=False, out=str(out)))
    result = run_search(config)

    dataset = load_dataset("imagenet", imagenet_sample_dir, "train")
    assert len(dataset) == 1000
    selected = [dataset.files[i] for i in result.split.selected]
    loaders = result.loaders
    assert loaders["weights"].files == [dataset.files[i] for i in result.split.weights]
    assert loaders["arch"].files == loaders["eval"].files == [dataset.files[i] for i in result.split.arch]
    assert sorted(loaders["weights"].files + loaders["arch"].files) == sorted(selected)
    assert len(selected) == 64 and not set(loaders["weights"].files) & set(loaders["arch"].files)
    assert loaders["weights"].labels == [int(dataset.labels[i]) for i in result.split.weights]
    assert all(loader.image_size == 64 for loader in loaders.values())

    assert isinstance(result.model, NetworkImageNetSearch)
    assert result.model.classifier.out_features == 1000
    records = read_log(out / "log.jsonl")
    assert records[0]["loaders"] == {"weights": "store", "arch": "store", "eval": "store"}
    # the store of each half holds exactly that half's files; arch and eval share one
    assert loaders["weights"].store.files == loaders["weights"].files
    assert loaders["arch"].store.folder == loaders["eval"].store.folder
    assert loaders["arch"].store.files == loaders["arch"].files
    split = [r for r in records if r["event"] == "end"][-1].get("time_split") or {}
    assert split.get("data_detail", {}).get("decode", 0) > 0, split
    assert records[0]["steps_per_epoch"] == 4
    epoch = [r for r in records if r["event"] == "epoch"]
    assert len(epoch) == 1 and np.isfinite(epoch[0]["train_loss"]) and epoch[0]["train_loss"] > 0
    assert get_genotype(str(out / "genotype.json")) == result.genotype
    assert (out / "normal.png").is_file() and (out / "reduction.png").is_file()
    proxy = read_entropy_file(out / "proxy.txt", allow_nonfinite=True)
    assert np.array_equal(proxy.index, result.split.selected) and np.isnan(proxy.entropy).all()
    np.testing.assert_array_equal(proxy.label, dataset.labels[result.split.selected])
