"""A diverged run is not a success (issue 28): a non-finite loss, weights or alphas stop search, train and
train_scorer with exit 3 and one line saying where and what to try, the last good checkpoint kept and no genotype
written from NaN alphas; numeric flags that would diverge (nan, inf, out of range) are refused before any work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from proxynas_fast.divergence import first_non_finite
from proxynas_fast.safe_load import load_plain
from proxynas_fast.search.__main__ import main as search_main
from proxynas_fast.train.__main__ import main as train_main
from proxynas_fast.train_scorer import main as train_scorer_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def run_module(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def search_args(data_dir, out, *extra):
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--selection", "random", "--count", "64",
            "--batch-size", "16", "--epochs", "2", "--layers", "2", "--init-channels", "4", "--seed", "3",
            "--device", "cpu", "--no-progress", "--no-download", "--out", str(out), *extra]


def test_first_non_finite_names_the_first_bad_entry():
    ok = [torch.ones(3), torch.zeros(2, dtype=torch.float64), torch.arange(3)]
    assert first_non_finite({"loss": 1.0, "weights": ok}) is None
    assert first_non_finite({"loss": float("nan"), "weights": ok}) == "loss"
    assert first_non_finite({"loss": 1.0, "weights": ok + [torch.tensor([1.0, float("inf")])]}) == "weights"
    assert first_non_finite({"loss": torch.tensor(float("-inf"))}) == "loss"


def test_search_diverging_in_the_first_epoch_saves_nothing(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_module("proxynas_fast.search", *search_args(cifar10_jpeg_dir, out, "--learning-rate", "1e9"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("error: epoch 1/2: non-finite ") and "(the run diverged)" in errors[0]
    assert "try a lower --learning-rate (now 1e+09)" in errors[0] and "nothing was saved" in errors[0]
    assert not (out / "checkpoint.pt").exists() and not (out / "genotype.json").exists()
    assert not (out / "alphas.pt").exists()


def test_search_diverging_in_the_second_epoch_keeps_the_first(cifar10_jpeg_dir, tmp_path):
    """Epoch 1 trains the weights only (healthy); epoch 2's four alpha steps of about 1.5e38 each (Adam's step is
    the rate) overflow float32 alphas."""
    out = tmp_path / "run"
    proc = run_module("proxynas_fast.search", *search_args(cifar10_jpeg_dir, out, "--arch-begin-epoch", "1",
                                                           "--arch-learning-rate", "1.5e38", "--count", "128"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: epoch 2/2: non-finite "), proc.stderr[-2000:]
    assert f"the last good checkpoint {out / 'checkpoint.pt'} (after epoch 1) is kept" in errors[0]
    state = load_plain(out / "checkpoint.pt")
    assert state["epochs_done"] == 1
    assert all(torch.isfinite(a).all() for a in state["arch"].values())
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype["epochs_done"] == 1 and genotype["finished"] is False

    # A checkpoint holding NaN alphas (as earlier versions wrote them) is not resumed from.
    state["arch"] = {k: torch.full_like(v, float("nan")) for k, v in state["arch"].items()}
    torch.save(state, out / "checkpoint.pt")
    proc = run_module("proxynas_fast.search", *search_args(cifar10_jpeg_dir, out, "--arch-begin-epoch", "1",
                                                           "--arch-learning-rate", "1.5e38", "--count", "128",
                                                           "--resume"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert errors == [f"error: --resume: {out / 'checkpoint.pt'} (after epoch 1): non-finite alphas (the run "
                      "diverged); start a new --out with a lower --learning-rate or --arch-learning-rate; the "
                      "checkpoint is left as it is"], proc.stderr[-2000:]
    assert json.loads((out / "genotype.json").read_text()) == genotype


@pytest.mark.parametrize("flag,value,problem", [
    ("--learning-rate", "inf", "must be a finite number > 0, got inf"),
    ("--learning-rate", "nan", "got nan"),
    ("--arch-learning-rate", "inf", "must be a finite number > 0, got inf"),
    ("--arch-learning-rate", "2e38", "2e+38 makes Adam's first step 4e+38, beyond float32's range"),
    ("--learning-rate", "1e39", "1e+39 is beyond float32's range"),
    ("--momentum", "nan", "must be a number in [0, 1), got nan"),
    ("--momentum", "1", "must be a number in [0, 1), got 1.0"),
    ("--weight-decay", "nan", "must be a finite number >= 0, got nan"),
    ("--arch-weight-decay", "inf", "must be a finite number >= 0, got inf"),
    ("--grad-clip", "inf", "must be a finite number > 0, got inf"),
    ("--seed", "-1", "must be an integer in [0, 4294967295]"),
    ("--layers", "100000", "100000 is over the maximum of 100 cells"),
])
def test_search_refuses_flags_that_cannot_train_before_any_work(tmp_path, capsys, flag, value, problem):
    out = tmp_path / "run"
    # The data folder does not exist: the flag must be refused first.
    assert search_main(search_args(tmp_path / "no-data", out, flag, value)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {flag}: ") and problem in err[-1], err
    assert not out.exists()


TRAIN = ["--arch", "DARTS_V2", "--dataset", "cifar10", "--init-channels", "8", "--layers", "3", "--train-limit",
         "64", "--test-limit", "20", "--batch-size", "32", "--epochs", "2", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("flag,value,problem", [
    ("--lr", "inf", "must be a finite number > 0, got inf"),
    ("--lr", "nan", "must be a finite number > 0, got nan"),
    ("--momentum", "nan", "must be a number in [0, 1), got nan"),
    ("--weight-decay", "-1", "must be a finite number >= 0, got -1.0"),
    ("--grad-clip", "inf", "must be a finite number >= 0, got inf"),
    ("--lr-gamma", "nan", "must be a finite number > 0, got nan"),
    ("--seed", "-1", "must be an integer in [0, 4294967295]"),
    ("--batch-size", "1", "must be at least 2: BatchNorm needs more than one example per batch"),
    ("--batch-size", "1000000", "1000000 is over the maximum of 65536 examples"),
    ("--init-channels", "100000", "100000 is over the maximum of 1024 channels"),
])
def test_train_refuses_flags_that_cannot_train_before_any_work(tmp_path, capsys, flag, value, problem):
    out = tmp_path / "run"
    assert train_main(TRAIN + ["--data-dir", str(tmp_path / "no-data"), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {flag}: ") and problem in err[-1], err
    assert not out.exists()


def test_train_diverging_exits_3_with_one_line(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_module("proxynas_fast.train", *TRAIN, "--data-dir", cifar10_jpeg_dir, "--out", out, "--lr", "1e9")
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith("error: epoch 1/2") and "non-finite" in errors[0], errors
    assert "try a lower --lr (now 1e+09)" in errors[0] and "nothing was saved" in errors[0]
    assert not (out / "checkpoint.pt").exists() and not (out / "results.json").exists()


@pytest.mark.parametrize("flag,value,problem", [
    ("--lr", "inf", "must be a finite number > 0, got inf"),
    ("--lr", "nan", "must be a finite number > 0, got nan"),
    ("--seed", "-1", "must be an integer in [0, 4294967295]"),
])
def test_train_scorer_refuses_flags_before_any_work(tmp_path, capsys, flag, value, problem):
    out = tmp_path / "s.th"
    assert train_scorer_main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "no-data"), "--out", str(out),
                              flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {flag}: ") and problem in err, err
    assert not out.exists()


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_train_scorer_diverging_writes_no_scorer(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "s.th"
    proc = run_module("proxynas_fast.train_scorer", "--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir,
                      "--out", out, "--epochs", "2", "--limit", "100", "--batch-size", "50", "--device", "cpu",
                      "--lr", "1e9")
    assert proc.returncode == 3, proc.stderr[-2000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "non-finite weights (the run diverged); try a lower --lr (now 1e+09); " in errors[0], errors
    assert not out.exists()  # no scorer from NaN weights
    progress = tmp_path / "s.th.progress"
    if errors[0].startswith("error: epoch 2/2: "):  # epoch 1 stayed finite: its progress file is kept
        assert f"the last good checkpoint {progress} (after epoch 1) is kept" in errors[0]
        state = load_plain(progress)
        assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                           if v.is_floating_point())
    else:
        assert errors[0].startswith("error: epoch 1/2: ") and "nothing was saved" in errors[0]
        assert not progress.exists()
