"""A file a user hands over never runs code (issue 28): every CLI path that reads a checkpoint or a scorer refuses a
pickle carrying a payload with one line, exit 2, and the payload does not run; the project's own checkpoints load
under weights_only=True."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from proxynas_fast.safe_load import UnsafeFileError, load_plain
from proxynas_fast.search.checkpoint import read_epochs_done
from proxynas_fast.search.run_ownership import interrupted_message
from proxynas_fast.train.trainer import describe_saved

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


class _Payload:
    """Unpickling this runs `touch <marker>` (what an attacker's file would do with worse commands)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_payload(path, marker, **fields):
    """A checkpoint-shaped dict whose weights are the payload."""
    torch.save({"state_dict": _Payload(marker), "model": _Payload(marker), "epoch": 1, **fields}, path)
    return path


def run_module(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(proc, path, marker):
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{path}: refused: it holds posix.system" in errors[0] and "could run code" in errors[0], errors
    assert not marker.exists(), "the payload ran"


def test_the_payload_runs_under_an_unrestricted_load(tmp_path):
    """The test's payload is live: the loads refused below would run it."""
    marker = tmp_path / "ran"
    torch.load(write_payload(tmp_path / "p.pt", marker), weights_only=False)
    assert marker.exists()


def test_load_plain_refuses_the_payload_and_reads_tensors_arrays_and_containers(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeFileError, match="refused: it holds posix.system"):
        load_plain(write_payload(tmp_path / "p.pt", marker))
    assert not marker.exists()
    plain = {"w": torch.ones(2), "a": np.arange(3, dtype=np.uint32), "t": (1, 2.5, None, "x"), "l": [True]}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match=r"^not a torch file of plain data \(Unsupported operand 110\)$"):
        load_plain(tmp_path / "junk.pt")  # not called unsafe, and without torch's advice to load it unsafely
    torch.save(plain, tmp_path / "ok.pt")
    back = load_plain(tmp_path / "ok.pt")
    assert torch.equal(back["w"], plain["w"]) and np.array_equal(back["a"], plain["a"])
    assert back["t"] == plain["t"] and back["l"] == [True]


def test_rng_state_is_plain_data_and_restores(tmp_path):
    from proxynas_fast.rng import capture_rng_state, restore_rng_state

    np.random.seed(7)
    state = capture_rng_state()
    expected = np.random.rand(3)
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))  # no NumPy objects in the file
    assert np.array_equal(np.random.rand(3), expected)


def test_score_checkpoint_payload_does_not_run(tmp_path, cifar10_jpeg_dir):
    marker, pay = tmp_path / "ran", write_payload(tmp_path / "scorer.th", tmp_path / "ran")
    proc = run_module("proxynas_fast.score", "--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir, "--checkpoint",
                      pay, "--out", tmp_path / "e.txt", "--limit", 10, "--device", "cpu", "--no-progress")
    assert_refused(proc, pay, marker)


SEARCH = ["--dataset", "cifar10", "--count", "64", "--batch-size", "16", "--epochs", "1", "--layers", "2",
          "--init-channels", "4", "--device", "cpu", "--no-progress", "--no-download"]


def test_search_scorer_checkpoint_payload_does_not_run(tmp_path, cifar10_jpeg_dir):
    marker, pay = tmp_path / "ran", write_payload(tmp_path / "scorer.th", tmp_path / "ran")
    proc = run_module("proxynas_fast.search", *SEARCH, "--data-dir", cifar10_jpeg_dir, "--scorer-checkpoint", pay,
                      "--out", tmp_path / "run")
    assert_refused(proc, pay, marker)


def test_search_resume_payload_does_not_run(tmp_path, cifar10_jpeg_dir):
    out = tmp_path / "run"
    out.mkdir()
    marker, pay = tmp_path / "ran", write_payload(out / "checkpoint.pt", tmp_path / "ran")
    proc = run_module("proxynas_fast.search", *SEARCH, "--selection", "random", "--data-dir", cifar10_jpeg_dir,
                      "--out", out, "--resume")
    assert_refused(proc, pay, marker)


def test_train_resume_payload_does_not_run(tmp_path, cifar10_jpeg_dir):
    out = tmp_path / "run"
    out.mkdir()
    marker, pay = tmp_path / "ran", write_payload(out / "checkpoint.pt", tmp_path / "ran")
    proc = run_module("proxynas_fast.train", "--arch", "DARTS_V2", "--dataset", "cifar10", "--data-dir",
                      cifar10_jpeg_dir, "--init-channels", "8", "--layers", "3", "--train-limit", "64",
                      "--test-limit", "20", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
                      "--no-progress", "--out", out, "--resume")
    assert_refused(proc, pay, marker)


def test_train_scorer_resume_payload_does_not_run(tmp_path, cifar10_jpeg_dir):
    marker = tmp_path / "ran"
    pay = write_payload(tmp_path / "s.th.progress", marker)
    proc = run_module("proxynas_fast.train_scorer", "--dataset", "cifar10", "--data-dir", cifar10_jpeg_dir,
                      "--out", tmp_path / "s.th", "--epochs", "1", "--limit", "100", "--device", "cpu", "--resume")
    assert_refused(proc, pay, marker)


def test_interrupt_messages_do_not_run_a_payload_checkpoint(tmp_path):
    """The Ctrl-C / SIGTERM lines of search and train read the checkpoint to say what was saved."""
    marker = tmp_path / "ran"
    for name in ("search", "train"):
        (tmp_path / name).mkdir()
        write_payload(tmp_path / name / "checkpoint.pt", marker, epochs_done=1, config={"epochs": 2})
    assert read_epochs_done(tmp_path / "search" / "checkpoint.pt") is None
    message = interrupted_message(str(tmp_path / "search"), ["--out", str(tmp_path / "search")])
    assert "resume with:" in message
    assert describe_saved(tmp_path / "train") == (f"{tmp_path / 'train'} holds no readable checkpoint "
                                                  f"({tmp_path / 'train' / 'checkpoint.pt'} cannot be read or is refused)")
    assert not marker.exists()
