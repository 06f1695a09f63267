"""Progress when stderr is not a terminal: lines (search steps and validation, training epochs), not silence."""
from __future__ import annotations

import io
import sys

import torch
import torch.nn as nn

from proxynas_fast.darts.genotypes import get_genotype
from proxynas_fast.progress import LineProgress, open_progress
from proxynas_fast.search.distributed import DistContext
from proxynas_fast.search.loop import validate
from proxynas_fast.train.config import TrainConfig
from proxynas_fast.train.networks import NetworkCIFAR
from proxynas_fast.train.trainer import Trainer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_after_the_first_step_then_every_interval():
    clock, out = FakeClock(), io.StringIO()
    p = LineProgress(10, "epoch 1/3", stream=out, every=30, clock=clock)
    clock.now += 4
    p.update()  # first step: a line at once, with the time per step behind the estimate
    for _ in range(3):
        clock.now += 4
        p.update()  # 16 s since start, 12 s since the last line: nothing
    p.set_postfix(loss="2.301", acc="11.0")
    clock.now += 20
    p.update()  # 32 s since the last line
    for _ in range(5):
        clock.now += 4
        p.update()  # steps 6-9: nothing; step 10, the last: a line with the loop's whole time
    assert out.getvalue().splitlines() == ["epoch 1/3: step 1/10, 4s, ~36s left",
                                          "epoch 1/3: step 5/10, 36s, ~36s left, loss=2.301, acc=11.0",
                                          "epoch 1/3: step 10/10, 56s, loss=2.301, acc=11.0"]


def test_open_progress_picks_by_stream():
    assert open_progress(False, 5, "x", stream=io.StringIO()) is None
    assert isinstance(open_progress(True, 5, "x", stream=io.StringIO()), LineProgress)
    bar = open_progress(True, 5, "x", stream=FakeTerminal())
    assert type(bar).__name__ == "tqdm"
    bar.close()


def _batches(n, batch, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


class ListLoader(list):
    def set_epoch(self, epoch):
        pass


def test_training_logs_lines_when_redirected(tmp_path, single_thread, monkeypatch):
    monkeypatch.setenv("PROXYNAS_PROGRESS_SECONDS", "0")  # a line per step
    redirected = io.StringIO()
    monkeypatch.setattr(sys, "stderr", redirected)
    cfg = TrainConfig(arch="DARTS_V2", dataset="cifar10", out=str(tmp_path), init_channels=4, layers=3, epochs=2,
                      batch_size=16, drop_path_prob=0.0, cutout=0, device="cpu", progress=True).validate()
    torch.manual_seed(0)
    model = NetworkCIFAR(4, 4, 3, True, get_genotype("DARTS_V2"))
    Trainer(cfg, model, ListLoader(_batches(48, 16, 0)), ListLoader(_batches(16, 16, 1)), torch.device("cpu"),
            tmp_path, {}).fit()
    lines = redirected.getvalue().splitlines()
    for epoch in (1, 2):
        for step in (1, 2, 3):
            assert any(line.startswith(f"epoch {epoch}/2: step {step}/3, ") for line in lines), lines
    assert "\r" not in redirected.getvalue()  # no bar redrawing into a log file

    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    cfg.progress, cfg.out = False, str(tmp_path / "quiet")
    Trainer(cfg, model, ListLoader(_batches(48, 16, 0)), ListLoader(_batches(16, 16, 1)), torch.device("cpu"),
            tmp_path / "quiet", {}).fit()
    assert "step" not in quiet.getvalue()  # --no-progress: epoch lines only


def test_search_validation_logs_lines_when_redirected(single_thread, monkeypatch):
    monkeypatch.setenv("PROXYNAS_PROGRESS_SECONDS", "0")
    redirected = io.StringIO()
    monkeypatch.setattr(sys, "stderr", redirected)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    metrics = validate(model, nn.CrossEntropyLoss(), _batches(40, 16, 2), ctx, torch.device("cpu"), progress=True,
                       description="epoch 2/3 validation")
    assert metrics.examples == 40
    assert redirected.getvalue().splitlines() == ["epoch 2/3 validation: step 1/3, 0s, ~0s left",
                                                  "epoch 2/3 validation: step 2/3, 0s, ~0s left",
                                                  "epoch 2/3 validation: step 3/3, 0s"]
