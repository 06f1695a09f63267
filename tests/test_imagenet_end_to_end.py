"""ImageNet end to end on the CPU, on the 1,000-image sample, through the three CLIs a user runs:

    score  a randomly initialised ResNet-50 saved as torchvision publishes its weights (a bare state_dict; the
           layout is pinned by test_scorer_route.py)
    select a 10% P1 proxy of the entropies
    search --preset imagenet shrunk by flags (a small supernet, 64x64 crops, a batch that fits a proxy half; the
           supernet is wide enough that its steps, not the batch drawing, take the time, as at full scale)

The search reads the proxy's pictures from the image store: they are decoded once, and the time split in log.jsonl
counts that as data (`decode`); drawing batches in later epochs is counted as data too (`batches`), and stays under
10% of those epochs' training time (the steps dominate, as they must on a GPU at full scale).
"""
from __future__ import annotations

import numpy as np
import torch

from proxynas_fast import score, select
from proxynas_fast.data import load_dataset
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.scoring import resnet50
from proxynas_fast.search.__main__ import main as search_main
from proxynas_fast.search.outputs import read_log


def test_score_select_search_on_the_imagenet_sample(imagenet_sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYNAS_IMAGE_STORE", str(tmp_path / "store"))  # a first run: the store is built here
    dataset = load_dataset("imagenet", imagenet_sample_dir, "train")
    scorer = tmp_path / "resnet50-random.pth"
    torch.manual_seed(0)
    torch.save(resnet50().state_dict(), scorer)
    entropy = tmp_path / "entropy.txt"
    assert score.main(["--dataset", "imagenet", "--data-dir", str(imagenet_sample_dir), "--checkpoint", str(scorer),
                       "--out", str(entropy), "--image-size", "32", "--batch-size", "250", "--device", "cpu",
                       "--no-progress"]) == 0
    table = read_entropy_file(entropy)
    assert len(table) == 1000 and np.isfinite(table.entropy).all()
    np.testing.assert_array_equal(table.sorted_by_index().label, dataset.labels)

    proxy = tmp_path / "proxy"
    assert select.main(["--entropy-file", str(entropy), "--method", "p1", "--portion", "0.1", "--dataset", "imagenet",
                        "--out", str(proxy)]) == 0
    chosen = read_entropy_file(proxy / "proxy.txt")
    assert len(chosen) == 100

    run = tmp_path / "search"
    epochs = 3
    assert search_main(["--preset", "imagenet", "--data-dir", str(imagenet_sample_dir), "--proxy", str(proxy),
                        "--out", str(run), "--batch-size", "10", "--layers", "4", "--init-channels", "16",
                        "--epochs", str(epochs), "--image-size", "64", "--device", "cpu", "--no-progress"]) == 0

    records = read_log(run / "log.jsonl")
    start, end = records[0], records[-1]
    assert start["config"]["preset"] == "imagenet" and start["config"]["strategy"] == "darts"
    assert start["config"]["validate_every"] == 0 and start["config"]["learning_rate"] == 0.025
    assert start["proxy"]["selected"] == 100 and start["proxy"]["weights"] == start["proxy"]["arch"] == 50
    assert start["loaders"] == {"weights": "store", "arch": "store", "eval": "store"}
    assert start["steps_per_epoch"] == 5
    per_epoch = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in per_epoch] == list(range(1, epochs + 1))
    # the preset's validation: after the last epoch only
    assert [r["val_loss"] is not None for r in per_epoch] == [False] * (epochs - 1) + [True]
    assert all(np.isfinite(r["train_loss"]) for r in per_epoch)

    # Decoding happens once, before the first epoch, and is counted there.
    split = end["time_split"]
    assert split["data_detail"]["decode"] > 0 and any((tmp_path / "store").iterdir()), split
    assert abs(split["data_detail"]["batches"] - sum(r["data_seconds"] for r in per_epoch)) < 0.01, split
    # After the first epoch, drawing batches (store reads + batched augmentation) is under 10% of the training.
    later = per_epoch[1:]
    data, train = sum(r["data_seconds"] for r in later), sum(r["train_seconds"] for r in later)
    assert 0 < data < 0.1 * train, [(r["data_seconds"], r["train_seconds"]) for r in per_epoch]
    assert (run / "genotype.json").is_file()
