"""Summary numbers, the weight/architecture split, proxy files and the histogram plot."""
import json

import numpy as np
import pytest
from PIL import Image

from proxynas_fast.entropy_file import EntropyTable, read_entropy_file
from proxynas_fast.selection import (distribution_entropy, format_summary, log_entropy_histogram, select,
                                     split_proxy, summarize_selection, write_proxy_files, write_summary)
from proxynas_fast.selection.plot import plot_selection_histogram


@pytest.fixture(scope="module")
def cifar10(reference_entropy_dir):
    return read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")


def test_summary_counts_and_data_entropy(cifar10, tmp_path):
    chosen = select("p1", cifar10.entropy, portion=0.1, seed=0, dataset="cifar10")
    s = summarize_selection(cifar10.entropy, cifar10.label, chosen, 0.5, method="p1", seed=0)
    binning = log_entropy_histogram(cifar10.entropy, 0.5)
    assert [b["available"] for b in s["bins"]] == binning.counts.tolist()
    selected = np.bincount(binning.bin_index[chosen], minlength=binning.num_bins)
    assert [b["selected"] for b in s["bins"]] == selected.tolist()
    assert s["num_selected"] == 5000 and s["num_examples"] == 50000 and s["portion"] == 0.1
    assert [c["available"] for c in s["classes"]] == [5000] * 10
    assert sum(c["selected"] for c in s["classes"]) == 5000
    p = selected[selected > 0] / 5000
    assert s["data_entropy_nats"]["selected"] == pytest.approx(-(p * np.log(p)).sum())
    assert s["data_entropy_nats"]["full"] == pytest.approx(distribution_entropy(binning.counts))
    # P1 flattens the histogram: its data entropy beats the full set's and a random proxy's.
    rand = select("random", cifar10.entropy, portion=0.1, seed=0)
    s_rand = summarize_selection(cifar10.entropy, cifar10.label, rand, 0.5)
    assert s["data_entropy_nats"]["selected"] > s["data_entropy_nats"]["full"]
    assert s["data_entropy_nats"]["selected"] > s_rand["data_entropy_nats"]["selected"]
    assert abs(s_rand["data_entropy_nats"]["selected"] - s_rand["data_entropy_nats"]["full"]) < 0.05

    write_summary(s, tmp_path / "summary.json", tmp_path / "summary.txt")
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    text = (tmp_path / "summary.txt").read_text()
    assert "selected 5000 of 50000" in text and "[0, 0.5]" in text and text == format_summary(s)


def test_distribution_entropy_values():
    assert distribution_entropy([5, 5]) == pytest.approx(np.log(2))
    assert distribution_entropy([0, 7, 0]) == 0.0
    assert distribution_entropy([1, 1, 1, 1]) == pytest.approx(np.log(4))


def test_summary_with_a_zero_bin_is_valid_json(tmp_path):
    entropy = np.array([0.0, 0.0, 1e-4, 0.3, 0.01])
    s = summarize_selection(entropy, None, np.array([0, 3]), 0.5)
    assert s["bins"][0]["label"] == "entropy=0" and s["bins"][0]["lower_log10"] is None
    assert s["bins"][0]["available"] == 2 and s["bins"][0]["selected"] == 1
    json.loads(json.dumps(s, allow_nan=False))
    plot_selection_histogram(s, tmp_path / "zero.png")
    assert Image.open(tmp_path / "zero.png").size[0] > 100


def test_split_halves():
    positions = np.arange(0, 10000, 2)
    weights, arch = split_proxy(positions, 0.5, seed=3)
    assert len(weights) == len(arch) == 2500
    assert np.array_equal(np.sort(np.concatenate([weights, arch])), positions)
    again = split_proxy(positions, 0.5, seed=3)
    assert np.array_equal(again[0], weights) and np.array_equal(again[1], arch)
    assert not np.array_equal(split_proxy(positions, 0.5, seed=4)[0], weights)
    w3, a3 = split_proxy(positions, 0.3, seed=0)
    assert (len(w3), len(a3)) == (1500, 3500)
    for bad in (0, 1, 1.2, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"split fraction must be in \(0, 1\)"):
            split_proxy(positions, bad)
    with pytest.raises(ValueError, match="leaves a half empty"):
        split_proxy(np.array([4]), 0.5)


def test_proxy_files_round_trip(tmp_path):
    table = EntropyTable(np.array([30, 10, 20, 0, 50, 40]), np.array([0.5, 1e-7, 0.25, 0.125, 2.0, 3e-12]),
                         np.array([3, 1, 2, 0, 5, 4]))
    paths = write_proxy_files(tmp_path, table, np.array([0, 1, 3, 5]), fraction=0.5, seed=1)
    assert sorted(p.name for p in paths.values()) == ["proxy.txt", "proxy_arch.txt", "proxy_weights.txt"]
    everything = read_entropy_file(paths["all"])
    assert everything.index.tolist() == [0, 10, 30, 40]  # sorted by data-set index
    assert everything.entropy.tolist() == [0.125, 1e-7, 0.5, 3e-12]  # exact floats
    assert everything.label.tolist() == [0, 1, 3, 4]
    halves = [read_entropy_file(paths["weights"]), read_entropy_file(paths["arch"])]
    assert [len(h) for h in halves] == [2, 2]
    assert sorted(np.concatenate([h.index for h in halves]).tolist()) == [0, 10, 30, 40]


def test_plot_is_a_png(cifar10, tmp_path):
    chosen = select("p3", cifar10.entropy, portion=0.1, seed=0, dataset="cifar10")
    s = summarize_selection(cifar10.entropy, cifar10.label, chosen, 0.5)
    plot_selection_histogram(s, tmp_path / "plot" / "h.png", title="p3")
    with Image.open(tmp_path / "plot" / "h.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400
    assert [p.name for p in (tmp_path / "plot").iterdir()] == ["h.png"]  # no temporary file left
