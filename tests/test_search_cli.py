"""End to end through `python -m proxynas_fast.search` on the real CIFAR-10 JPEGs with the paper's entropy list:
P1 selection -> 50/50 split -> a small first-order DARTS search -> the output files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cli_process import child_env
from proxynas_fast.darts import genotype_from_dict, get_genotype
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.search import SearchConfig
from proxynas_fast.search.outputs import read_log
from proxynas_fast.selection import select

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One OpenMP thread: as fast for these tiny networks, and immune to the spin-wait slowdown of a busy machine.
CHILD_ENV = child_env()


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "proxynas_fast.search", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=CHILD_ENV)


def check_time_split(end: dict, epochs: list, stdout: str) -> None:
    """The end record's time split (issue 18): data, search steps, validation and outputs, each >= 0, adding up
    to at most the wall time; the steps and validation are the epochs' own timings; one line on stdout."""
    split = end["time_split"]
    parts = [split[k] for k in ("data", "search_steps", "validation", "outputs")]
    assert all(p >= 0 for p in parts) and split["other"] >= 0, split
    assert sum(parts) + split["other"] <= split["wall"], split
    assert abs(end["seconds"] - split["wall"]) < 1e-3  # the old key, the same wall time
    assert split["data"] > 0 and split["outputs"] > 0, split  # the images were decoded, the files written
    # the epochs' batch drawing is data (`batches`), the rest of their training time search steps
    assert abs(split["search_steps"] - sum(r["train_seconds"] - r["data_seconds"] for r in epochs)) < 0.01, split
    assert abs(split["validation"] - sum(r["val_seconds"] for r in epochs)) < 0.01, split
    assert abs(split["data_detail"]["batches"] - sum(r["data_seconds"] for r in epochs)) < 0.01, split
    assert set(split["data_detail"]) == {"load", "score", "select", "loaders", "batches"}
    assert {"checkpoints", "genotype", "graphs"} <= set(split["outputs_detail"])
    assert sum(split["outputs_detail"].values()) <= split["outputs"] + 1e-3
    line = [t for t in stdout.splitlines() if t.startswith("time split: ")]
    assert len(line) == 1 and " + search steps " in line[0] and " + validation " in line[0], stdout[-2000:]


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_cifar10_search_writes_a_valid_genotype(cifar10_jpeg_dir, reference_entropy_dir, tmp_path):
    entropy_file = reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"
    out = tmp_path / "run"
    proc = run_cli("--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir, "--entropy-file", entropy_file,
                   "--selection", "p1", "--count", 128, "--strategy", "darts", "--epochs", 2, "--batch-size", 16,
                   "--layers", 3, "--init-channels", 4, "--seed", 5, "--log-every", 2, "--out", out, "--no-download")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 2/2" in proc.stdout and "genotype: Genotype(" in proc.stdout

    # genotype.json: loadable, the model's final genotype (also the last epoch record's).
    genotype = get_genotype(str(out / "genotype.json"))
    meta = json.loads((out / "genotype.json").read_text())
    assert meta["finished"] and meta["epochs_done"] == 2 and meta["strategy"] == "darts"
    records = read_log(out / "log.jsonl")
    events = [r["event"] for r in records]
    assert events[0] == "start" and events[-1] == "end" and events.count("epoch") == 2
    assert events.count("step") == 2 * 2  # 4 steps per epoch, a record every 2
    epochs = [r for r in records if r["event"] == "epoch"]
    assert genotype == genotype_from_dict(epochs[-1]["genotype"])
    for r in epochs:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert np.isfinite(r[key]), key
        for kind in ("alphas_normal", "alphas_reduce"):
            soft = np.asarray(r["alphas"][kind])
            assert soft.shape == (14, 8)
            np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-9)
    assert epochs[0]["lr"] == 0.025 and epochs[1]["lr"] < epochs[0]["lr"]  # cosine schedule
    assert records[0]["proxy"] == {"selected": 128, "weights": 64, "arch": 64, "entropy_file": str(entropy_file)}
    check_time_split(records[-1], epochs, proc.stdout)

    # alphas.pt: raw weights whose softmax is the logged one, and whose discretisation is the genotype.
    alphas = torch.load(out / "alphas.pt")
    assert alphas["arch"]["alphas_normal"].shape == (14, 8)
    np.testing.assert_allclose(torch.softmax(alphas["arch"]["alphas_reduce"].double(), -1).numpy(),
                               np.asarray(epochs[-1]["alphas"]["alphas_reduce"]), rtol=1e-6)
    assert not (alphas["arch"]["alphas_normal"] == 0).all()

    # Cell drawings.
    for name in ("normal.png", "reduction.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 300

    # Proxy files: the P1 selection of the reference entropies, split 64/64, with their entropies and labels.
    table = read_entropy_file(entropy_file)
    config = SearchConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert (config.selection, config.count, config.seed, config.strategy) == ("p1", 128, 5, "darts")
    expected = select("p1", table.entropy, count=128, labels=table.label, seed=5, dataset="cifar10")
    proxy = read_entropy_file(out / "proxy.txt")
    weights, arch = read_entropy_file(out / "proxy_weights.txt"), read_entropy_file(out / "proxy_arch.txt")
    assert np.array_equal(proxy.index, expected)
    np.testing.assert_array_equal(proxy.entropy, table.entropy[expected])
    np.testing.assert_array_equal(proxy.label, table.label[expected])
    assert len(weights) == len(arch) == 64 and not set(weights.index) & set(arch.index)
    assert np.array_equal(np.sort(np.concatenate([weights.index, arch.index])), proxy.index)
