"""`python -m proxynas_fast.select`: outputs on the paper's CIFAR-10 list, every method's inputs, errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_process import child_env
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.select import main
from proxynas_fast.selection import select

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar10_file(reference_entropy_dir):
    return reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"


def test_p1_run_writes_proxy_halves_summary_and_plot(cifar10_file, tmp_path, capsys):
    out = tmp_path / "p1"
    rc = main(["--entropy-file", str(cifar10_file), "--method", "p1", "--portion", "0.1", "--seed", "0",
               "--dataset", "cifar10", "--out", str(out)])
    assert rc == 0
    assert "selected 5000 of 50000 with p1" in capsys.readouterr().out
    table = read_entropy_file(cifar10_file)
    proxy = read_entropy_file(out / "proxy.txt")
    expected = select("p1", table.entropy, portion=0.1, seed=0, dataset="cifar10")
    assert np.array_equal(proxy.index, table.index[expected])
    assert np.array_equal(proxy.entropy, table.entropy[expected]) and np.array_equal(proxy.label, table.label[expected])
    weights, arch = read_entropy_file(out / "proxy_weights.txt"), read_entropy_file(out / "proxy_arch.txt")
    assert len(weights) == len(arch) == 2500
    assert not set(weights.index.tolist()) & set(arch.index.tolist())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_selected"] == 5000 and summary["config"]["method"] == "p1"
    assert sum(b["selected"] for b in summary["bins"]) == 5000
    assert "data entropy" in (out / "summary.txt").read_text()
    with Image.open(out / "histogram.png") as im:
        assert im.format == "PNG"


def test_options_for_count_split_class_balance_and_rounding(cifar10_file, tmp_path):
    out = tmp_path / "cb"
    assert main(["--entropy-file", str(cifar10_file), "--method", "p3", "--count", "3210", "--round-to", "1000",
                 "--class-balanced", "--split-fraction", "0.3", "--bin-width", "0.25", "--seed", "2",
                 "--out", str(out)]) == 0
    proxy = read_entropy_file(out / "proxy.txt")
    assert len(proxy) == 3000 and np.bincount(proxy.label).tolist() == [300] * 10
    assert len(read_entropy_file(out / "proxy_weights.txt")) == 900
    assert json.loads((out / "summary.json").read_text())["bin_width"] == 0.25


def test_kcenter_and_forgetting_inputs_by_dataset_index(tmp_path):
    # A small score file whose index column is not 0..N-1: feature/count rows follow the index column.
    index = np.array([7, 2, 5, 0, 9, 4])
    entropy = np.array([0.1, 0.2, 0.05, 0.3, 1e-4, 0.02])
    (tmp_path / "s.txt").write_text("".join(f"{i}\t{e}\t{i % 2}\n" for i, e in zip(index, entropy)))
    features = np.zeros((10, 2), dtype=np.float32)
    features[:, 0] = np.arange(10)  # points on a line: 0 and 9 are the extremes
    np.save(tmp_path / "f.npy", features)
    assert main(["--entropy-file", str(tmp_path / "s.txt"), "--method", "kcenter", "--count", "3",
                 "--features", str(tmp_path / "f.npy"), "--device", "cpu", "--bin-width", "0.5",
                 "--split-fraction", "0.4", "--out", str(tmp_path / "kc")]) == 0
    expected = select("kcenter", entropy, count=3, seed=0, features=features[index], device="cpu")
    assert read_entropy_file(tmp_path / "kc" / "proxy.txt").index.tolist() == sorted(index[expected].tolist())
    (tmp_path / "counts.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate([0, 1, 5, 0, 2, 0, 0, 9, 0, 3])))
    assert main(["--entropy-file", str(tmp_path / "s.txt"), "--method", "forgetting", "--count", "2",
                 "--forgetting-counts", str(tmp_path / "counts.txt"), "--dataset", "cifar10",
                 "--out", str(tmp_path / "fg")]) == 0
    assert read_entropy_file(tmp_path / "fg" / "proxy.txt").index.tolist() == [2, 7]


@pytest.mark.parametrize("args,pattern", [
    (["--portion", "1.5"], r"portion must be in \(0, 1\], got 1.5"),
    (["--count", "60000"], r"count must be in 1..50000 .*got 60000"),
    (["--portion", "0.1", "--method", "p7"], r"unknown selection method 'p7'"),
    (["--portion", "0.1", "--method", "kcenter"], r"--method kcenter needs --features: "),
    (["--portion", "0.1", "--split-fraction", "1"], r"--split-fraction must be in \(0, 1\), got 1.0"),
    ([], r"pass --portion P \(0 < P <= 1\) or --count N"),
    (["--count", "0"], r"--count must be >= 1, got 0"),
    (["--count", "5", "--seed", "-1"], r"--seed must be >= 0, got -1"),
    (["--count", "5", "--features", "f.npy"], r"--method p1 does not use --features"),
])
def test_bad_requests_exit_2_with_a_message(cifar10_file, tmp_path, capsys, args, pattern):
    rc = main(["--entropy-file", str(cifar10_file), "--dataset", "cifar10", "--out", str(tmp_path)] + args)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(pattern, err), err


def test_bad_files_are_named(cifar10_file, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("0\t0.1\t3\n1\tzero\t4\n")
    assert main(["--entropy-file", str(bad), "--portion", "0.5", "--dataset", "cifar10", "--out", str(tmp_path)]) == 2
    assert f"{bad}:2: cannot parse" in capsys.readouterr().err
    missing = tmp_path / "nope.txt"
    assert main(["--entropy-file", str(missing), "--portion", "0.5", "--dataset", "cifar10",
                 "--out", str(tmp_path)]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err
    np.save(tmp_path / "short.npy", np.zeros((100, 4)))
    assert main(["--entropy-file", str(cifar10_file), "--method", "kcenter", "--count", "5", "--dataset", "cifar10",
                 "--features", str(tmp_path / "short.npy"), "--out", str(tmp_path)]) == 2
    assert "short.npy: has 100 rows but the entropy file has example index 49999" in capsys.readouterr().err
    # A part of a data set (here 30 rows) names no data set: p1 needs the bin width from a CLI flag.
    small = tmp_path / "small.txt"
    small.write_text("".join(f"{i}\t{0.5 ** i}\t{i % 3}\n" for i in range(30)))
    assert main(["--entropy-file", str(small), "--portion", "0.1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--method p1 bins log10(entropy) and needs a bin width: pass --dataset" in err and "--bin-width" in err
    assert "bin_width=" not in err and "small.txt has 30 rows with labels 0..2" in err


def test_module_entry_point(tmp_path):
    (tmp_path / "s.txt").write_text("".join(f"{i}\t{0.5 ** i}\t{i % 3}\n" for i in range(30)))
    env = child_env()
    run = subprocess.run([sys.executable, "-m", "proxynas_fast.select", "--entropy-file", str(tmp_path / "s.txt"),
                          "--method", "p2", "--portion", "0.5", "--dataset", "svhn", "--out", str(tmp_path / "o"),
                          "--no-proxy-files"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    written = sorted(p.name for p in (tmp_path / "o").iterdir() if p.name != ".proxynas-owner.json")
    assert written == ["histogram.png", "summary.json", "summary.txt"]


def test_list_methods(capsys):
    assert main(["--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "kcenter:" in out and "forgetting_counts:" in out and "p1:" in out
