"""Faults at scale (issue 28, item 9), on CPU with gloo and two small ranks.

- A frozen rank (SIGSTOP) does not hang the others: their collective fails after the process group's timeout
  (--dist-timeout) and they end with one line.
- A rank that dies ends the run on the survivor with one line naming what was saved and the torchrun command that
  resumes (under torchrun its agent usually SIGTERMs the survivors first: that line is the SIGTERM handling's);
  `torchrun --max-restarts 1` then resumes from that checkpoint by itself (no --resume added).
- --sync-bn: two ranks' BatchNorm statistics, outputs and input gradients equal one process's BatchNorm over the
  concatenated batch (to float tolerance); without it each rank normalises its own share (the test shows the
  difference, so it can fail).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

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
import os, signal, sys
from proxynas_fast.search import pipeline
if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
    real, calls = pipeline.train_epoch, []

    def dies_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and os.environ.get("FAULT") == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)  # frozen: its sockets stay open, it never answers
        if len(calls) == 2:
            os._exit(9)  # as kill -9: no exception, no message, its sockets close
        return real(*args, **kwargs)

    pipeline.train_epoch = dies_in_the_second_epoch
from proxynas_fast.search.__main__ import main
sys.exit(main())
"""


def _search_args(data_dir, out, timeout="120"):
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--selection", "random", "--count", "64",
            "--batch-size", "8", "--epochs", "2", "--layers", "3", "--init-channels", "4", "--seed", "11",
            "--device", "cpu", "--backend", "reference", "--no-progress", "--no-download", "--out", str(out),
            "--dist-timeout", timeout]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
@pytest.mark.parametrize("fault, timeout, what", [("die", "120", "another rank died"),
                                                  ("freeze", "30", "another rank did not answer")])
def test_a_dead_or_frozen_rank_ends_the_survivor_with_one_line_and_the_resume_command(cifar10_jpeg_dir, tmp_path,
                                                                                     fault, timeout, what):
    # Two ranks started as torchrun starts them, without its agent (which would SIGTERM the survivor at once):
    # what every surviving rank does when its collective finds the other rank gone, or silent past the timeout.
    out, driver = tmp_path / "ddp", tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = _search_args(cifar10_jpeg_dir, out, timeout)
    env = dict(ENV, WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               FAULT=fault)
    ranks = [subprocess.Popen([sys.executable, str(driver), *args], cwd=REPO, env=dict(env, RANK=str(r),
                              LOCAL_RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        _, err = ranks[0].communicate(timeout=600)
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert ranks[0].returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if not line.startswith(("  ", "/")) and "Warning" not in line]
    assert lines == [f"error: rank 0 of 2: {what} (a rank that dies ends the run at once; one that "
                     f"freezes, after --dist-timeout {timeout} s); the checkpoint after epoch 1/2 is saved in "
                     f"{out / 'checkpoint.pt'}; resume with: torchrun --nproc-per-node 2 -m proxynas_fast.search "
                     f"{' '.join(args)} --resume"], err[-3000:]


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_torchrun_max_restarts_resumes_from_the_checkpoint_without_resume(cifar10_jpeg_dir, tmp_path):
    out, driver = tmp_path / "ddp", tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", str(driver), *_search_args(cifar10_jpeg_dir, out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # The first attempt lost rank 1 in epoch 2; the second resumed after epoch 1 without --resume, and finished.
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


def test_a_run_saved_before_the_new_options_resumes(tmp_path):
    import json

    from proxynas_fast.search.resume import check_out_dir

    out = tmp_path / "old"
    out.mkdir()
    config = resolve_config({"dataset": "cifar10", "out": str(out), "selection": "random", "resume": True})
    saved = config.to_dict()
    del saved["sync_bn"], saved["dist_timeout"]  # a config.json written before these options existed
    (out / "config.json").write_text(json.dumps(saved))
    (out / "checkpoint.pt").write_bytes(b"weights")
    assert check_out_dir(config)["seed"] == config.seed  # accepted: the options had their defaults then
    config.sync_bn, config.backend = True, "reference"
    with pytest.raises(SearchError, match=r"sync_bn: saved False vs now True"):
        check_out_dir(config)
