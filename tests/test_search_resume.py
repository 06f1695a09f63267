"""A search killed with SIGKILL in the middle of an epoch and resumed with --resume ends exactly where an
uninterrupted run with the same seed ends (deterministic mode, CPU: bitwise equal alphas and weights)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cli_process import child_env
from proxynas_fast.darts import get_genotype
from proxynas_fast.search.outputs import read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One OpenMP thread: as fast for these tiny networks, and immune to the spin-wait slowdown of a busy machine.
CHILD_ENV = child_env()


def command(data_dir, out, *extra):
    return [sys.executable, "-m", "proxynas_fast.search", "--dataset", "cifar10", "--data-dir", str(data_dir),
            "--selection", "random", "--count", "96", "--batch-size", "8", "--epochs", "2", "--layers", "3",
            "--init-channels", "4", "--seed", "3", "--deterministic", "--device", "cpu", "--log-every", "1",
            "--no-progress", "--no-download", "--out", str(out), *extra]


def run(cmd):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=CHILD_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_mid_epoch(cmd, log_path, epoch, step, timeout=600):
    """Start the run, SIGKILL it as soon as the log shows `step` of `epoch` done."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=CHILD_ENV)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
            if log_path.exists():
                for line in log_path.read_text().splitlines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if rec.get("event") == "step" and rec["epoch"] == epoch and rec["step"] >= step:
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        return
            time.sleep(0.005)
        raise AssertionError("the run did not reach the kill point in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(cifar10_jpeg_dir, tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    # The uninterrupted run goes alongside (one thread each, two cores).
    uninterrupted = subprocess.Popen(command(cifar10_jpeg_dir, full), cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    try:
        kill_mid_epoch(command(cifar10_jpeg_dir, broken), broken / "log.jsonl", epoch=2, step=2)
        _, err = uninterrupted.communicate(timeout=600)
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
    assert uninterrupted.returncode == 0, err[-3000:]
    state = torch.load(broken / "checkpoint.pt", weights_only=False)
    assert state["epochs_done"] == 1  # killed inside epoch 2, after its checkpoint of epoch 1
    last = read_log(broken / "log.jsonl")[-1]
    assert last["event"] == "step" and last["epoch"] == 2 and last["step"] < last["steps"]

    # Without --resume the folder is protected; with it the run continues from epoch 2.
    refused = subprocess.run(command(cifar10_jpeg_dir, broken), cwd=REPO, capture_output=True, text=True,
                             timeout=600, env=CHILD_ENV)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = run(command(cifar10_jpeg_dir, broken, "--resume"))
    lines = [line for line in resumed.stdout.splitlines() if not line.startswith("threads:")]
    assert "resuming" in lines[0] and not any(line.startswith("epoch 1/2") for line in lines)

    a, b = torch.load(full / "alphas.pt"), torch.load(broken / "alphas.pt")
    assert a["arch"].keys() == b["arch"].keys()
    for name in a["arch"]:
        assert torch.equal(a["arch"][name], b["arch"][name]), name
    assert get_genotype(str(full / "genotype.json")) == get_genotype(str(broken / "genotype.json"))
    sa = torch.load(full / "checkpoint.pt", weights_only=False)
    sb = torch.load(broken / "checkpoint.pt", weights_only=False)
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"])

    # The resumed log reads like the uninterrupted one: same epoch records, no duplicated steps.
    def epoch_records(path):
        return [{k: v for k, v in r.items() if not k.endswith("seconds")}
                for r in read_log(path) if r["event"] == "epoch"]

    assert epoch_records(full / "log.jsonl") == epoch_records(broken / "log.jsonl")
    steps = [(r["epoch"], r["step"]) for r in read_log(broken / "log.jsonl") if r["event"] == "step"]
    assert steps == [(e, s) for e in (1, 2) for s in range(1, 7)]
