"""Faults at scale (issue 28, item 9), on CPU with gloo and two small ranks.

- A frozen rank (SIGSTOP) does not hang the others: their collective fails after the process group's timeout
  (--dist-timeout) and they end with one line.
- A rank that dies ends the run on the survivor with one line naming what was saved and the torchrun command that
  resumes; `torchrun --max-restarts 1` then resumes from that checkpoint by itself (no --resume added).
- --sync-bn: two ranks' BatchNorm statistics, outputs and input gradients equal one process's BatchNorm over the
  concatenated batch (to float tolerance); without it each rank normalises its own share (the test shows the
  difference, so it can fail).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from proxynas_fast.search.config import resolve_config
from proxynas_fast.search.distributed import SyncBatchNorm2d, convert_sync_batchnorm
from proxynas_fast.search.errors import SearchError
from proxynas_fast.search.outputs import read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")

FROZEN_RANK = """
import os, signal, sys, time
from proxynas_fast.search.distributed import RanksLost, barrier, process_group
rank, store, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
start = None
try:
    with process_group("cpu", init_method=store, rank=rank, world_size=2, timeout_s=timeout) as ctx:
        barrier(ctx)
        if rank == 1:
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen, not dead: its sockets stay open
        start = time.monotonic()
        barrier(ctx)
except RanksLost as e:
    print(f"{time.monotonic() - start:.2f}", flush=True)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
"""


def test_a_frozen_rank_ends_the_others_after_the_timeout(tmp_path):
    store = f"file://{tmp_path / 'store'}"
    ranks = [subprocess.Popen([sys.executable, "-c", FROZEN_RANK, str(r), store, "3"], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out, err = ranks[0].communicate(timeout=240)  # the import of torch on a busy machine, then 3 s
        assert ranks[0].returncode == 2, err
        waited = float(out.strip())
        assert 2.9 <= waited <= 3 + 20, waited  # gave up after the timeout, not before and not never
        assert err == ("error: rank 0 of 2: another rank did not answer (a rank that dies ends the run at once; one "
                       "that freezes, after --dist-timeout 3 s)\n")
    finally:
        for p in ranks:
            p.kill()
            p.wait()


DRIVER = """
import os, sys
from proxynas_fast.search import pipeline
if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
    real, calls = pipeline.train_epoch, []

    def dies_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os._exit(9)  # as kill -9: no exception, no message, its sockets close
        return real(*args, **kwargs)

    pipeline.train_epoch = dies_in_the_second_epoch
from proxynas_fast.search.__main__ import main
sys.exit(main())
"""


def test_a_dead_rank_ends_the_run_and_torchrun_restarts_resume_it(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "ddp"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = ["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--selection", "random", "--count", "64",
            "--batch-size", "8", "--epochs", "2", "--layers", "3", "--init-channels", "4", "--seed", "11",
            "--device", "cpu", "--backend", "reference", "--no-progress", "--no-download", "--out", str(out),
            "--dist-timeout", "120"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", str(driver), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The first attempt: rank 1 died in epoch 2; rank 0 said so in one line, with the command that resumes.
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: rank 0 of 2: another rank died (a rank that dies ends the run at once; one that "
                     f"freezes, after --dist-timeout 120 s); the checkpoint after epoch 1/2 is saved in "
                     f"{out / 'checkpoint.pt'}; resume with: torchrun --nproc-per-node 2 -m proxynas_fast.search "
                     f"{' '.join(args)} --resume"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("error: rank 0")[0][-2000:]
    # The second attempt resumed after epoch 1 without --resume, and finished.
    assert "torchrun restarted the job: resuming" in proc.stdout
    events = [(r["event"], r.get("epoch", r.get("epochs_done"))) for r in read_log(out / "log.jsonl")]
    assert events[0][0] == "start" and ("resume", 1) in events and events[-1][0] == "end"
    assert [e for e in events if e[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]


SYNC_BN = """
import sys
import torch
from proxynas_fast.search.distributed import SyncBatchNorm2d, process_group
rank, store, affine, sync, path = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1", sys.argv[5]
g = torch.Generator().manual_seed(0)
x_all, grad_all = torch.randn(8, 3, 5, 5, generator=g) * 3 + 1, torch.randn(8, 3, 5, 5, generator=g)
with process_group("cpu", init_method=store, rank=rank, world_size=2, timeout_s=120):
    bn = (SyncBatchNorm2d if sync else torch.nn.BatchNorm2d)(3, affine=affine)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = x_all[4 * rank:4 * rank + 4].clone().requires_grad_(True)
    for _ in range(2):  # twice: the running statistics follow the global batch step by step
        y = bn(x)
    (y * grad_all[4 * rank:4 * rank + 4]).sum().backward()
    torch.save({"y": y.detach(), "grad": x.grad, "mean": bn.running_mean, "var": bn.running_var}, path)
"""


def _two_ranks_batch_norm(tmp_path, affine: bool, sync: bool):
    store = f"file://{tmp_path / ('store%d%d' % (affine, sync))}"
    paths = [tmp_path / f"rank{r}_{affine}_{sync}.pt" for r in (0, 1)]
    ranks = [subprocess.Popen([sys.executable, "-c", SYNC_BN, str(r), store, str(int(affine)), str(int(sync)),
                               str(paths[r])], env=ENV, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in ranks:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    return [torch.load(p, weights_only=True) for p in paths]


def _one_process_reference(affine: bool):
    g = torch.Generator().manual_seed(0)
    x_all, grad_all = torch.randn(8, 3, 5, 5, generator=g) * 3 + 1, torch.randn(8, 3, 5, 5, generator=g)
    bn = torch.nn.BatchNorm2d(3, affine=affine)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = x_all.clone().requires_grad_(True)
    for _ in range(2):
        y = bn(x)
    (y * grad_all).sum().backward()
    return {"y": y.detach(), "grad": x.grad, "mean": bn.running_mean, "var": bn.running_var}


@pytest.mark.parametrize("affine", [False, True])  # the search cells' BatchNorms are affine=False
def test_sync_bn_two_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, affine):
    ref = _one_process_reference(affine)
    ranks = _two_ranks_batch_norm(tmp_path, affine, sync=True)
    for key in ("y", "grad"):
        got = torch.cat([ranks[0][key], ranks[1][key]])
        torch.testing.assert_close(got, ref[key], rtol=1e-5, atol=1e-5)
    for key in ("mean", "var"):
        for r in ranks:
            torch.testing.assert_close(r[key], ref[key], rtol=1e-5, atol=1e-6)
    if affine:
        return
    # Per-rank BatchNorm (plain DDP) normalises each share by itself: not the one-process run.
    plain = _two_ranks_batch_norm(tmp_path, affine, sync=False)
    assert not torch.allclose(torch.cat([plain[0]["y"], plain[1]["y"]]), ref["y"], atol=1e-3)
    assert not torch.allclose(plain[0]["mean"], ref["mean"], atol=1e-3)


def test_convert_sync_batchnorm_keeps_the_search_models_batchnorms(tmp_path):
    from proxynas_fast.darts.model_search import Network

    torch.manual_seed(0)
    model = Network(4, 10, 3, torch.nn.CrossEntropyLoss())
    plain = [m for m in model.modules() if type(m) is torch.nn.BatchNorm2d]
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    replaced = convert_sync_batchnorm(model)
    synced = [m for m in model.modules() if isinstance(m, SyncBatchNorm2d)]
    assert replaced == len(plain) == len(synced) > 0
    assert [m.affine for m in synced] == [m.affine for m in plain] and not all(m.affine for m in synced)
    torch.testing.assert_close(model(x), before)  # one process: nn.BatchNorm2d's computation


def test_sync_bn_and_dist_timeout_flags_are_checked():
    base = {"dataset": "cifar10", "out": "x", "selection": "random"}
    with pytest.raises(SearchError, match=r"^--sync-bn: synchronises nn\.BatchNorm2d modules"):
        resolve_config({**base, "sync_bn": True})
    assert resolve_config({**base, "sync_bn": True, "backend": "reference"}).sync_bn
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(SearchError, match=r"^--dist-timeout: must be a number of seconds > 0"):
            resolve_config({**base, "dist_timeout": bad})
    assert resolve_config(base).dist_timeout == 1800.0
