"""Training from scratch: presets, the trainer's checkpoint/resume, and the CLI on real CIFAR-10."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from proxynas_fast.cli_errors import DivergedError
from cli_process import child_env
from proxynas_fast.darts.genotypes import get_genotype
from proxynas_fast.train.__main__ import main
from proxynas_fast.train.config import TrainConfig, make_config
from proxynas_fast.train.data import select_indices
from proxynas_fast.train.networks import NetworkCIFAR
from proxynas_fast.train.trainer import Trainer, load_checkpoint, read_log

REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- presets

def test_paper_presets_are_the_darts_settings():
    c = make_config("paper", "DARTS_V2", "cifar10", "out")
    assert (c.init_channels, c.layers, c.auxiliary_weight, c.drop_path_prob, c.cutout) == (36, 20, 0.4, 0.2, 16)
    assert (c.epochs, c.batch_size, c.lr, c.lr_schedule) == (600, 96, 0.025, "cosine")
    assert (c.momentum, c.weight_decay, c.grad_clip, c.label_smoothing) == (0.9, 3e-4, 5.0, 0.0)
    i = make_config("paper", "DARTS_V2", "imagenet", "out")
    assert (i.init_channels, i.layers, i.epochs, i.batch_size, i.label_smoothing) == (48, 14, 250, 128, 0.1)
    assert (i.lr, i.lr_schedule, i.lr_gamma, i.lr_step, i.weight_decay) == (0.1, "step", 0.97, 1, 3e-5)
    assert i.auxiliary and i.auxiliary_weight == 0.4
    d = make_config("cpu-demo", "DARTS_V2", "cifar10", "out", epochs=7, auxiliary=False)
    assert (d.init_channels, d.layers, d.train_limit, d.test_limit) == (8, 5, 3000, 1000)
    assert d.epochs == 7 and d.auxiliary is False  # overrides win over the preset


@pytest.mark.parametrize("override, message", [
    ({"init_channels": 7}, "--init-channels"),
    ({"layers": 2}, "--layers"),
    ({"train_portion": 1.5}, "--train-portion"),
    ({"amp": "fp8"}, "--amp"),
    ({"drop_path_prob": 1.0}, "--drop-path-prob"),
])
def test_bad_settings_name_the_option(override, message):
    with pytest.raises(ValueError, match=message):
        make_config("paper", "DARTS_V2", "cifar10", "out", **override)


def test_select_indices():
    assert select_indices(10).tolist() == list(range(10))
    assert select_indices(10, limit=3, mode="first").tolist() == [0, 1, 2]
    assert select_indices(10, portion=0.5, mode="first").tolist() == [0, 1, 2, 3, 4]
    a = select_indices(1000, limit=100, seed=1)
    assert len(a) == 100 and np.all(np.diff(a) > 0) and a.max() > 500  # spread over the whole set
    assert np.array_equal(a, select_indices(1000, limit=100, seed=1))
    assert not np.array_equal(a, select_indices(1000, limit=100, seed=2))


# ------------------------------------------------------------------- trainer on an in-test loader

class TensorLoader:
    """Minimal loader: shuffles by (seed, epoch) like the project loaders, yields (x, y)."""

    def __init__(self, x, y, batch_size, seed=0, shuffle=True, fail_at=None):
        self.x, self.y, self.batch_size, self.seed, self.shuffle = x, y, batch_size, seed, shuffle
        self.epoch = 0
        self.fail_at = fail_at  # (epoch, batch): raise there, standing in for a kill

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = torch.arange(len(self.y))
        if self.shuffle:
            order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            if self.fail_at == (self.epoch, b):
                raise KeyboardInterrupt("simulated kill")
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]


def _synthetic(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float() * 0.5
    return x, y


def _tiny_trainer(tmp_path, fail_at=None, **overrides):
    cfg = TrainConfig(arch="DARTS_V2", dataset="cifar10", out=str(tmp_path), init_channels=4, layers=3,
                      epochs=3, batch_size=32, lr=0.05, drop_path_prob=0.3, cutout=0, progress=False,
                      device="cpu", seed=5)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.validate()
    torch.manual_seed(cfg.seed)
    model = NetworkCIFAR(cfg.init_channels, 4, cfg.layers, cfg.auxiliary, get_genotype(cfg.arch))
    x, y = _synthetic()
    train = TensorLoader(x, y, cfg.batch_size, seed=cfg.seed, fail_at=fail_at)
    test = TensorLoader(*_synthetic(20, seed=1), 20, shuffle=False)
    return Trainer(cfg, model, train, test, torch.device("cpu"), tmp_path, {"note": "tiny"})


def test_interrupted_and_resumed_training_matches_uninterrupted(tmp_path, single_thread):
    full = _tiny_trainer(tmp_path / "full")
    full_results = full.fit(resume=True)  # nothing to resume yet: a fresh, seeded run
    with pytest.raises(KeyboardInterrupt):
        _tiny_trainer(tmp_path / "cut", fail_at=(1, 1)).fit()  # dies inside epoch 2
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = _tiny_trainer(tmp_path / "cut")
    resumed_results = resumed.fit(resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_results["test_acc"] == full_results["test_acc"]
    assert resumed_results["test_loss"] == full_results["test_loss"]
    # The log holds each epoch once, with the same numbers.
    strip = lambda recs: [{k: v for k, v in r.items() if k != "seconds"} for r in recs]  # noqa: E731
    assert strip(read_log(tmp_path / "cut" / "log.jsonl")) == strip(read_log(tmp_path / "full" / "log.jsonl"))
    assert [r["epoch"] for r in read_log(tmp_path / "full" / "log.jsonl")] == [1, 2, 3]
    # drop-path ramps linearly from 0 to (epochs-1)/epochs of its final value
    assert [r["drop_path_prob"] for r in read_log(tmp_path / "full" / "log.jsonl")] == pytest.approx([0, 0.1, 0.2])
    assert not [p for p in (tmp_path / "full").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_results_checkpoint_contents_and_resume_guards(tmp_path, single_thread):
    trainer = _tiny_trainer(tmp_path, epochs=1, amp="fp16", channels_last=True)
    results = trainer.fit()
    assert trainer.scaler.is_enabled()  # fp16 needs loss scaling
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["params"] == results["params"] > 0 and saved["note"] == "tiny"
    assert saved["params_with_auxiliary"] > saved["params"]
    assert 0.0 <= saved["test_acc"] <= 100.0 and np.isfinite(saved["test_loss"])
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert set(state["rng"]) >= {"python", "numpy", "torch"} and state["epoch"] == 1
    assert state["optimizer"]["state"]  # momentum buffers
    with pytest.raises(FileExistsError, match="--resume"):
        _tiny_trainer(tmp_path, epochs=1, amp="fp16", channels_last=True).fit()
    with pytest.raises(ValueError, match="lr"):
        _tiny_trainer(tmp_path, epochs=1, amp="fp16", channels_last=True, lr=0.1).fit(resume=True)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_step_schedule_bf16_and_progress_bar(tmp_path, single_thread, monkeypatch):
    trainer = _tiny_trainer(tmp_path, lr_schedule="step", lr_gamma=0.5, epochs=2, auxiliary=False,
                            label_smoothing=0.1, amp="bf16", progress=True)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    trainer.fit()
    assert "epoch 2/2:" in terminal.getvalue() and "2/2 [" in terminal.getvalue()  # the tqdm bar
    assert [r["lr"] for r in read_log(tmp_path / "log.jsonl")] == pytest.approx([0.05, 0.025])
    assert np.isfinite(read_log(tmp_path / "log.jsonl")[-1]["train_loss"])


def test_non_finite_loss_stops_the_run(tmp_path, single_thread):
    trainer = _tiny_trainer(tmp_path, epochs=1)
    trainer.train_loader.x[:] = float("nan")
    with pytest.raises(DivergedError, match="epoch 1/1, by step .*: non-finite training loss"):
        trainer.fit()


# ---------------------------------------------------------------------------------------- CLI

def test_cli_rejects_unknown_arch_and_bad_data_dir(tmp_path, capsys):
    assert main(["--arch", "NO_SUCH_CELL", "--out", str(tmp_path / "a")]) == 2
    assert "NO_SUCH_CELL" in capsys.readouterr().err
    assert main(["--arch", "DARTS_V2", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--no-progress"]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["--arch", "DARTS_V2", "--init-channels", "5", "--out", str(tmp_path / "c")]) == 2
    assert "--init-channels" in capsys.readouterr().err


@pytest.mark.slow
def test_short_cifar10_training_learns(tmp_path, cifar10_jpeg_dir, single_thread):
    # Measured: 36.7 % test accuracy after 3 epochs (~70 CPU-seconds); chance is 10 %.
    out = tmp_path / "run"
    rc = main(["--arch", "DARTS_V2", "--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir),
               "--out", str(out), "--preset", "cpu-demo", "--init-channels", "8", "--layers", "5",
               "--train-limit", "2000", "--test-limit", "1000", "--epochs", "3", "--batch-size", "64",
               "--lr", "0.08", "--cutout", "0", "--drop-path-prob", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_examples"] == 1000 and results["train_examples"] == 2000
    log = read_log(out / "log.jsonl")
    assert len(log) == 3 and log[-1]["train_loss"] < log[0]["train_loss"]
    assert results["test_acc"] > 25.0, results


CLI_TINY = ["--arch", "DARTS_V2", "--dataset", "cifar10", "--preset", "cpu-demo", "--init-channels", "8",
            "--layers", "3", "--train-limit", "192", "--test-limit", "100", "--batch-size", "32",
            "--epochs", "3", "--drop-path-prob", "0.2", "--cutout", "16", "--seed", "3", "--device", "cpu",
            "--deterministic", "--no-progress"]


def _cli(args, **kw):
    env = child_env()
    return subprocess.Popen([sys.executable, "-m", "proxynas_fast.train", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_killed_and_resumed_cli_run_ends_like_an_uninterrupted_one(tmp_path, cifar10_jpeg_dir):
    common = CLI_TINY + ["--data-dir", str(cifar10_jpeg_dir)]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = _cli(common + ["--out", str(full_dir)])
    out, err = full.communicate(timeout=300)
    assert full.returncode == 0, err

    victim = _cli(common + ["--out", str(cut_dir)])
    deadline = time.monotonic() + 300
    while not (cut_dir / "checkpoint.pt").exists():
        assert victim.poll() is None, victim.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # Epoch 2 takes about as long as epoch 1 did: kill it halfway through.
    time.sleep(0.5 * read_log(cut_dir / "log.jsonl")[0]["seconds"])
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(cut_dir / "checkpoint.pt")["epoch"] == 1 and not (cut_dir / "results.json").exists()

    resumed = _cli(common + ["--out", str(cut_dir), "--resume"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    a = load_checkpoint(full_dir / "checkpoint.pt")
    b = load_checkpoint(cut_dir / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    ra = json.loads((full_dir / "results.json").read_text())
    rb = json.loads((cut_dir / "results.json").read_text())
    for r in (ra, rb):
        r.pop("train_seconds"), r["config"].pop("out")
    assert ra == rb and ra["test_examples"] == 100
    assert [r["epoch"] for r in read_log(cut_dir / "log.jsonl")] == [1, 2, 3]


def test_imagenet_training_runs_on_real_images(tmp_path, imagenet_sample_dir, single_thread):
    """NetworkImageNet + the ImageNet loader on 10 real classes (the sample has no val split, so its
    images stand in for both splits here)."""
    classes = sorted(p.name for p in (imagenet_sample_dir / "train").iterdir())[:10]
    for split in ("train", "val"):
        for wnid in classes:
            (tmp_path / "data" / split / wnid).mkdir(parents=True)
            for f in (imagenet_sample_dir / "train" / wnid).iterdir():
                (tmp_path / "data" / split / wnid / f.name).symlink_to(f)
    out = tmp_path / "run"
    rc = main(["--arch", "PC_DARTS", "--dataset", "imagenet", "--data-dir", str(tmp_path / "data"),
               "--out", str(out), "--preset", "paper", "--init-channels", "8", "--layers", "3", "--epochs", "1",
               "--batch-size", "5", "--loader-backend", "pil", "--device", "cpu", "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["num_classes"] == 10 and results["test_examples"] == 10
    assert results["config"]["label_smoothing"] == 0.1 and results["config"]["lr_schedule"] == "step"
    state = load_checkpoint(out / "checkpoint.pt")
    assert "stem0.0.weight" in state["model"] and "auxiliary_head.features.5.weight" in state["model"]
