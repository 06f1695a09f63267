"""`search --proxy DIR`: select's output feeds the search (real CIFAR-10 entropies and images)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_process import child_env
from proxynas_fast.entropy_file import read_entropy_file, write_entropy_file
from proxynas_fast.search import SearchError, resolve_config
from proxynas_fast.search.outputs import read_log
from proxynas_fast.search.proxy_dir import check_proxy_matches, read_proxy_dir

REPO = Path(__file__).resolve().parents[1]
ENTROPY = "cifar10_resnet20_index_entropy_class.txt"
PROXY_NAMES = ("proxy.txt", "proxy_weights.txt", "proxy_arch.txt")
TINY = ["--epochs", "1", "--batch-size", "16", "--layers", "3", "--init-channels", "4", "--seed", "3",
        "--no-download", "--device", "cpu"]


def _run(module, *args, env_extra=None):
    env = child_env(**(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def selected(tmp_path_factory, reference_entropy_dir):
    """select's output folder: P1, 64 examples of the real CIFAR-10 entropy list."""
    out = tmp_path_factory.mktemp("select") / "proxy"
    proc = _run("proxynas_fast.select", "--entropy-file", reference_entropy_dir / ENTROPY, "--method", "p1",
                "--count", 64, "--dataset", "cifar10", "--seed", 11, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_search_uses_exactly_the_selected_examples_and_resumes_from_its_copy(selected, cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    # OMP_NUM_THREADS=2 exported, --threads 1 given: the flag wins (recorded in the log).
    proc = _run("proxynas_fast.search", "--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir, "--proxy", selected,
                "--out", out, "--threads", 1, *TINY, env_extra={"OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in PROXY_NAMES:  # the run folder holds select's split, example for example
        mine, theirs = read_entropy_file(out / name), read_entropy_file(selected / name)
        assert np.array_equal(mine.index, theirs.index) and np.array_equal(mine.label, theirs.label), name
        np.testing.assert_array_equal(mine.entropy, theirs.entropy)
    start = read_log(out / "log.jsonl")[0]
    assert start["proxy"] == {"selected": 64, "weights": 32, "arch": 32, "entropy_file": None,
                              "folder": str(selected.resolve())}
    assert start["steps_per_epoch"] == 2  # 32 examples per half, batch 16
    # One thread sets no wait policy (the runtime's default, logged as None) unless this environment has one.
    assert start["threads"] == 1 and start["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")
    config = json.loads((out / "config.json").read_text())
    assert config["proxy"] == str(selected.resolve())
    assert config["selection"] is None and config["portion"] is None and config["count"] is None

    # The proxy folder moves away: the run resumes from its own copy (a different --proxy path is accepted).
    moved = tmp_path / "moved"
    shutil.copytree(selected, moved)
    proc = _run("proxynas_fast.search", "--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir, "--proxy", moved,
                "--out", out, "--resume", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_proxy_for_other_labels_is_refused_before_the_search(selected, cifar10_jpeg_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(selected, bad)
    for name in PROXY_NAMES:
        t = read_entropy_file(bad / name)
        write_entropy_file(bad / name, t.index, t.entropy, (t.label + 1) % 10)
    out = tmp_path / "run"
    proc = _run("proxynas_fast.search", "--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir, "--proxy", bad,
                "--out", out, *TINY)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: --proxy: ") and str(bad / "proxy.txt") in err and "labels disagree" in err, err
    assert not (out / "log.jsonl").exists()


def _write(folder: Path, all_rows, weights, arch):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(PROXY_NAMES, (all_rows, weights, arch)):
        idx = np.asarray([r[0] for r in rows])
        write_entropy_file(folder / name, idx, np.ones(len(rows)), np.asarray([r[1] for r in rows]))


def test_proxy_folder_checks(tmp_path):
    with pytest.raises(SearchError, match="does not exist"):
        read_proxy_dir(tmp_path / "nowhere")
    rows = [(0, 1), (3, 2), (5, 0), (9, 1)]
    _write(tmp_path / "ok", rows, rows[:2], rows[2:])
    proxy = read_proxy_dir(tmp_path / "ok")
    assert proxy.selected.tolist() == [0, 3, 5, 9] and proxy.weights.tolist() == [0, 3]
    labels = np.array([1, 0, 0, 2, 0, 0, 0, 0, 0, 1])
    check_proxy_matches(proxy, labels, "toy")
    with pytest.raises(SearchError, match=r"index 5 is not in the toy training set \(5 examples\) \(2 such"):
        check_proxy_matches(proxy, labels[:5], "toy")
    with pytest.raises(SearchError, match="index 3 has label 2 in the file, 0 in the data set"):
        check_proxy_matches(proxy, np.where(np.arange(10) == 3, 0, labels), "toy")

    (tmp_path / "ok" / "proxy_arch.txt").unlink()
    with pytest.raises(SearchError, match="proxy_arch.txt is missing"):
        read_proxy_dir(tmp_path / "ok")
    _write(tmp_path / "overlap", rows, rows[:3], rows[2:])
    with pytest.raises(SearchError, match="share 1 example"):
        read_proxy_dir(tmp_path / "overlap")
    _write(tmp_path / "short", rows, rows[:1], rows[2:])
    with pytest.raises(SearchError, match="index 3 of proxy.txt is in neither half"):
        read_proxy_dir(tmp_path / "short")
    _write(tmp_path / "relabelled", rows, [(0, 1), (3, 7)], rows[2:])
    with pytest.raises(SearchError, match="proxy_weights.txt gives example 3 label 7"):
        read_proxy_dir(tmp_path / "relabelled")


def test_a_duplicate_index_inside_one_half_is_refused_by_file_and_line(tmp_path):
    rows = [(0, 1), (3, 2), (5, 0), (9, 1)]
    # Index 3 twice in the weights half (line 3 repeats line 2).
    _write(tmp_path / "dup", rows, [(0, 1), (3, 2), (3, 2)], rows[2:])
    weights = tmp_path / "dup" / "proxy_weights.txt"
    with pytest.raises(SearchError) as e:
        read_proxy_dir(tmp_path / "dup")
    assert str(e.value) == f"--proxy: {weights}:3: duplicate example index 3 (also on line 2)"
    # Duplicated in proxy.txt and in the half alike, the sorted halves equal proxy.txt: still refused.
    _write(tmp_path / "dup", rows + [(3, 2)], [(0, 1), (3, 2), (3, 2)], rows[2:])
    with pytest.raises(SearchError, match=r"proxy\.txt:5: duplicate example index 3 \(also on line 2\)$"):
        read_proxy_dir(tmp_path / "dup")


def test_proxy_excludes_selection_flags(tmp_path):
    config = resolve_config({"dataset": "cifar10", "out": "o", "proxy": str(tmp_path / "p" / ".." / "p")})
    assert config.proxy == str((tmp_path / "p").resolve()) and config.selection is None
    for flag, value in (("entropy_file", "e.txt"), ("portion", 0.2), ("selection", "p2"), ("count", 10)):
        with pytest.raises(SearchError, match=f"--proxy .*drop --{flag.replace('_', '-')}"):
            resolve_config({"dataset": "cifar10", "out": "o", "proxy": "p", flag: value})
