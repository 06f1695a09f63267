"""CI-speed checks of the search-epoch benchmark's own code (benchmarks/bench_search_epoch.py and
benchmarks/paper_search_loop.py) on the real CIFAR-10 JPEGs: the paper loop's transforms and data, the steps cap
and the proxy it selects (the one `proxynas_fast.search` selects)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_search_epoch as bench  # noqa: E402  (the benchmarks folder is not a package)
import paper_search_loop as paper  # noqa: E402
from proxynas_fast.data import ArrayDataset  # noqa: E402
from proxynas_fast.entropy_file import read_entropy_file  # noqa: E402
from proxynas_fast.loaders import ResidentLoader  # noqa: E402
from proxynas_fast.search import pipeline, proxy_prep, resolve_config  # noqa: E402


@pytest.fixture(scope="module")
def jpegs(cifar10_jpeg_dir):
    return paper.cifar_jpeg_files(cifar10_jpeg_dir)


def decode(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def expected_transform(image: np.ndarray, seed: int) -> tuple[torch.Tensor, bool]:
    """RandomCrop(32, padding 4), RandomHorizontalFlip, ToTensor, Normalize, from the same draws; and the flip."""
    torch.manual_seed(seed)
    top, left = int(torch.randint(0, 9, (1,))), int(torch.randint(0, 9, (1,)))
    flip = torch.rand(1).item() < 0.5
    window = np.pad(image, ((4, 4), (4, 4), (0, 0)))[top:top + 32, left:left + 32]
    window = window[:, ::-1] if flip else window
    t = torch.from_numpy(window.astype(np.float32) / 255).permute(2, 0, 1)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (paper.CIFAR.train_mean, paper.CIFAR.train_std))
    return (t - mean) / std, flip


def test_paper_transform_pads_crops_flips_and_normalises(jpegs):
    files, _ = jpegs
    transform = paper.train_transform()
    flips = set()
    for seed in range(6):
        image = decode(files[seed])
        torch.manual_seed(seed)
        with Image.open(files[seed]) as img:
            got = transform(img.convert("RGB"))
        expected, flip = expected_transform(image, seed)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        flips.add(flip)
    assert flips == {True, False}, "the seeds should cover both flip outcomes"


def test_paper_queue_reads_the_files_of_the_data_set_indices(jpegs, cifar10_jpeg_dir, reference_entropy_dir):
    files, labels = jpegs
    table = read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt").sorted_by_index()
    np.testing.assert_array_equal(labels, table.label)  # index -> file mapping agrees with the entropy file
    indices = [3, 17, 4000, 49999]
    data = paper.JpegFiles([files[i] for i in indices], [labels[i] for i in indices], paper.to_tensor)
    for k, i in enumerate(indices):
        x, y = data[k]
        assert y == labels[i]
        np.testing.assert_array_equal((x * 255).round().byte().permute(1, 2, 0).numpy(), decode(files[i]))
    queue = paper.make_queue(files, labels, indices, paper.PaperSetting(batch_size=4, workers=0))
    x, y = next(iter(queue))
    assert x.shape == (4, 3, 32, 32) and sorted(y.tolist()) == sorted(int(labels[i]) for i in indices)


def resident_loader(jpegs, count: int = 20) -> ResidentLoader:
    files, labels = jpegs
    images = np.stack([decode(f) for f in files[:count]])
    return ResidentLoader(images, labels[:count], 4, train=True, mean=paper.CIFAR.train_mean,
                          std=paper.CIFAR.train_std, seed=3)


def test_capped_loader_yields_the_first_batches_and_delegates(jpegs):
    loader = resident_loader(jpegs)
    capped = bench.CappedLoader(loader, 2)
    capped.set_epoch(1)  # delegated to the loader
    assert loader.epoch == 1 and len(loader) == 5 and len(capped) == 2
    got, full = list(capped), list(loader)
    assert len(got) == 2
    for (x, y), (x_full, y_full) in zip(got, full):
        torch.testing.assert_close(x, x_full)
        torch.testing.assert_close(y, y_full)
    assert len(bench.CappedLoader(loader, 50)) == 5


def test_capped_loaders_caps_the_pipelines_loaders_and_restores_it(jpegs, tmp_path):
    files, labels = jpegs
    images = np.stack([decode(f) for f in files[:40]])
    dataset = ArrayDataset("cifar10", "train", images, labels[:40], [str(c) for c in range(10)],
                           paper.CIFAR.train_mean, paper.CIFAR.train_std, "")
    config = resolve_config(dict(dataset="cifar10", out=str(tmp_path / "out"), selection="random", count=40,
                                 batch_size=4, device="cpu"))
    split = proxy_prep.ProxySplit(np.arange(40), np.arange(0, 40, 2), np.arange(1, 40, 2))
    original = pipeline.build_loaders
    with pytest.raises(KeyError):
        with bench.capped_loaders(3):
            loaders = pipeline.build_loaders(config, dataset, split, rank=0, world_size=1,
                                             device=torch.device("cpu"))
            raise KeyError("leaving the block by an exception")
    assert pipeline.build_loaders is original
    assert set(loaders) == {"weights", "arch", "eval"}
    assert all(len(v) == 3 and len(list(v)) == 3 for v in loaders.values())  # 5 batches each without the cap
    with bench.capped_loaders(None):
        assert pipeline.build_loaders is original


class LabelsOnly:
    """What the pipeline's selection reads of a data set: its length and labels."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)


def test_benchmark_selects_the_proxy_the_search_pipeline_selects(jpegs, tmp_path):
    _, labels = jpegs
    mine = bench.select_proxy()
    config = bench.search_config(tmp_path / "out")
    split, _ = proxy_prep.select_proxy(config, LabelsOnly(labels), bench.ENTROPY_FILE)
    for part in ("selected", "weights", "arch"):
        np.testing.assert_array_equal(getattr(mine, part), getattr(split, part))
    assert len(mine.selected) == 5000 and len(mine.weights) == len(mine.arch) == 2500


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_paper_epoch_takes_capped_steps_and_writes_its_outputs(cifar10_jpeg_dir, tmp_path, single_thread):
    setting = paper.PaperSetting(batch_size=8, workers=0, init_channels=4, layers=3)
    result = paper.run_paper_epoch(cifar10_jpeg_dir, np.arange(0, 40, 2), np.arange(1, 40, 2), tmp_path, setting,
                                   steps=2)
    assert result.steps == 2 and result.val_batches == 2 and len(result.train_losses) == 2
    assert np.isfinite(result.train_losses).all() and np.isfinite(result.val_loss)
    assert 0 <= result.val_top1 <= result.val_top5 <= 100
    seconds = result.seconds
    assert seconds["epoch"] == pytest.approx(seconds["train"] + seconds["val"])
    assert seconds["total"] >= seconds["setup"] + seconds["epoch"] + seconds["outputs"] - 1e-6
    state = torch.load(tmp_path / "weights.pt")
    assert "classifier.weight" in state and "genotype = Genotype(" in (tmp_path / "log.txt").read_text()
