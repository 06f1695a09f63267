"""Two CPU processes under torchrun (gloo) search like one process that sees the same two half-batches.

What is equal, exactly: rank r trains on its shard (positions r, r+2, ... of each epoch's global order) of both
proxy halves. DDP averages the weight gradients and the search loop averages the architecture gradients, so
every step applies the gradient of the mean of the two ranks' losses. BatchNorm in training mode normalises
each rank's half-batch with that half-batch's statistics, so the matching single-process computation is NOT
one forward over the global batch of 16 but two forwards over the same two half-batches of 8, whose losses
are averaged. That is the reference below (built from the same pipeline pieces and loaders with rank=0/1).
With two ranks the averages are exact (a + b is commutative, halving is exact), so with the same thread count
as the ranks (1) the reference agrees bitwise on this machine; the tolerances only allow for summation-order
differences elsewhere. (With 2 threads instead, convolution sums differ in the last bits and Adam, which
divides by sqrt(v), magnifies them on near-zero alpha gradients to ~3e-6 after 4 steps.)
Compared: all alphas and all weights.
Not compared: BatchNorm running statistics (DDP broadcasts rank 0's; they never enter a training step).
Bitwise equal across the ranks: the final alphas and weights (measured by the run, logged as rank_max_abs_diff).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from cli_process import child_env
from proxynas_fast.darts import get_genotype
from proxynas_fast.search import SearchConfig
from proxynas_fast.search.distributed import DistContext
from proxynas_fast.search.outputs import read_log
from proxynas_fast.search.components import build_components, seed_everything
from proxynas_fast.search.data_setup import build_loaders, load_train_set
from proxynas_fast.search.proxy_prep import read_saved_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_two_half_batches(config: SearchConfig, out_dir):
    """One process replaying what ranks 0 and 1 do, step by step."""
    cpu = torch.device("cpu")
    dataset = load_train_set(config)
    split = read_saved_split(out_dir)
    seed_everything(config.seed)
    rank_loaders = [build_loaders(config, dataset, split, rank=r, world_size=2, device=cpu) for r in (0, 1)]
    parts = build_components(config, dataset.num_classes, cpu, DistContext(0, 1, 0, cpu), "reference")
    initial = [a.detach().clone() for a in parts.model.arch_parameters()]
    for epoch in range(config.epochs):
        lr = parts.scheduler.get_last_lr()[0]
        for loaders in rank_loaders:
            for loader in loaders.values():
                loader.set_epoch(epoch)
        iters = [(iter(L["weights"]), iter(L["arch"])) for L in rank_loaders]
        parts.model.train()
        for _ in range(min(len(rank_loaders[0]["weights"]), len(rank_loaders[0]["arch"]))):
            batches = [(next(w), next(a)) for w, a in iters]
            grads = [parts.architect.arch_gradients(xw, yw, xa, ya, lr, parts.optimizer, False)[0]
                     for (xw, yw), (xa, ya) in batches]
            parts.architect.optimizer.zero_grad()
            for alpha, g0, g1 in zip(parts.model.arch_parameters(), *grads):
                alpha.grad = (g0 + g1) / 2
            parts.architect.optimizer.step()
            parts.optimizer.zero_grad()
            for (xw, yw), _ in batches:
                (parts.criterion(parts.model(xw), yw) / 2).backward()
            nn.utils.clip_grad_norm_(parts.model.weights_parameters(), config.grad_clip)
            parts.optimizer.step()
        parts.scheduler.step()
    return parts.model, initial


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_two_gloo_ranks_match_one_process_on_the_same_half_batches(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "proxynas_fast.search", "--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir),
           "--selection", "random", "--count", "64", "--batch-size", "8", "--epochs", "2", "--layers", "3",
           "--init-channels", "4", "--seed", "11", "--device", "cpu", "--backend", "reference", "--no-progress",
           "--no-download", "--out", str(out)]
    env = child_env()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    records = read_log(out / "log.jsonl")
    assert records[0]["world_size"] == 2 and records[0]["steps_per_epoch"] == 2  # 32 per half, 16 per rank
    end = records[-1]
    assert end["event"] == "end" and end["rank_max_abs_diff"] == {"alphas": 0.0, "weights": 0.0}
    assert len([r for r in records if r["event"] == "epoch"]) == 2
    assert sorted(os.listdir(out)) == sorted([".proxynas-owner.json", "alphas.pt", "checkpoint.pt", "config.json",
                                              "genotype.json",
                                              "log.jsonl", "normal.png", "reduction.png", "proxy.txt",
                                              "proxy_arch.txt", "proxy_weights.txt"])  # one writer

    config = SearchConfig.from_dict(json.loads((out / "config.json").read_text()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        model, initial = reference_two_half_batches(config, out)
    finally:
        torch.set_num_threads(threads)
    ddp_alphas = torch.load(out / "alphas.pt")["arch"]
    for (name, ref), start in zip(model.arch_state().items(), initial):
        assert (ref - start).abs().max() > 1e-4  # the alphas did move: the comparison below is not vacuous
        torch.testing.assert_close(ddp_alphas[name], ref, rtol=0, atol=1e-7, msg=name)
    ddp_state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for key, value in model.state_dict().items():
        if "running_" in key or "num_batches_tracked" in key:
            continue
        torch.testing.assert_close(ddp_state[key], value, rtol=1e-5, atol=1e-7, msg=key)
    assert get_genotype(str(out / "genotype.json")) == model.genotype()


RANK_EXIT_PROBE = r"""
import gc, json, sys
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from proxynas_fast.search.config import resolve_config
from proxynas_fast.search.pipeline import run_search

rank, init, data_dir, out, report = sys.argv[1:]
gc.disable()  # no automatic collection may hide a DDP wrapper left in a reference cycle
config = resolve_config(dict(dataset="cifar10", data_dir=data_dir, out=out, selection="random", count=32,
                             batch_size=8, layers=3, init_channels=4, epochs=1, device="cpu", progress=False,
                             download=False, backend="reference"))
run_search(config, init_method=init, rank=int(rank), world_size=2)
# gc.get_objects() also lists unreachable objects not yet collected: a DDP still here would hold the process
# group until interpreter finalisation.
ddp_left = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
json.dump({"ddp_left": ddp_left, "group_alive": dist.is_initialized()}, open(report, "w"))
"""


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_each_rank_releases_ddp_and_leaves_the_process_group_when_the_search_returns(cifar10_jpeg_dir, tmp_path):
    """The search leaves nothing distributed behind for interpreter exit: once gloo is torn down under a dying
    interpreter the rank aborts (seen on CI as SIGABRT after a finished search)."""
    init = (tmp_path / "rendezvous").as_uri()
    env = child_env()
    procs = [subprocess.Popen([sys.executable, "-c", RANK_EXIT_PROBE, str(r), init, str(cifar10_jpeg_dir),
                               str(tmp_path / "out"), str(tmp_path / f"rank{r}.json")], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-4000:]
    for r in (0, 1):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"ddp_left": 0, "group_alive": False}
