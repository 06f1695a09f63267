"""No host-device synchronisation or transfer in a search step, checked without a GPU.

A whole first-order DARTS search step (architecture step + weight step, `SearchStep`) of the fused search network
runs on fake CUDA tensors (`FakeTensorMode`, CUDA build of torch) under `HostSyncRecorder` (tests/host_sync.py),
which fails at the first op that would make the host wait for the GPU (`.item()`, `nonzero`, ...) or copy host
memory to it. That is what CUDA-graph capture (`--cuda-graphs`) requires, and what `graphed_step.py` promises.
The compiled ops run through their fake kernels, as they would dispatch on a GPU with the CUDA kernels built.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from host_sync import HostSyncError, HostSyncRecorder, backward_without_engine, patched_autograd
from proxynas_fast import extension
from proxynas_fast.darts import architect as architect_module
from proxynas_fast.darts import fused
from proxynas_fast.darts.architect import Architect
from proxynas_fast.darts.graphed_step import SearchStep
from proxynas_fast.darts.model_search import Network
from proxynas_fast.darts.pcdarts import PCNetwork

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def fake_cuda(monkeypatch):
    """FakeTensorMode with CUDA as the default device (the fused cells' plans, with their index tensors, live on
    the models built inside it), and the compiled ops are taken to have CUDA kernels, so they dispatch to their
    fake kernels as on a GPU (without the extension the pure-PyTorch fallbacks run, as on a GPU without it)."""
    if extension.has_cpu_kernels():
        monkeypatch.setattr(extension, "has_kernels_for", lambda device: torch.device(device).type in ("cpu", "cuda"))
    with FakeTensorMode(), torch.device("cuda"), patched_autograd():
        yield


NETWORKS = {"darts": (Network, {}), "pcdarts": (PCNetwork, {"k": 2})}


def _search_step(network="darts"):
    torch.manual_seed(0)
    cls, kw = NETWORKS[network]
    model = cls(C=4, num_classes=10, layers=3, criterion=nn.CrossEntropyLoss(), backend="fused", **kw)
    w_opt = torch.optim.SGD(model.weights_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                             capturable=True)
    batch = [torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,)), torch.randn(2, 3, 8, 8),
             torch.randint(0, 10, (2,))]
    return model, SearchStep(model, w_opt, a_opt), batch


# ----- the recorder itself -----
@pytest.mark.parametrize("case", ["item", "bool", "nonzero", "list_index", "to_cuda", "copy_from_cpu", "to_cpu"])
def test_recorder_flags_each_kind_of_sync(fake_cuda, case):
    x = torch.randn(4, 3)
    actions = {
        "item": lambda: x.sum().item(),
        "bool": lambda: bool((x > 0).any()),
        "nonzero": lambda: x.nonzero(),
        "list_index": lambda: x[[0, 2]],
        "to_cuda": lambda: torch.ones(3, device="cpu").to("cuda"),
        "copy_from_cpu": lambda: x[0].copy_(torch.ones(3, device="cpu")),
        "to_cpu": lambda: x.cpu(),
    }
    with pytest.raises(HostSyncError):
        with HostSyncRecorder():
            actions[case]()


def test_recorder_passes_device_only_work_and_cpu_scalars(fake_cuda):
    x = torch.randn(4, 3, requires_grad=True)
    index = torch.tensor([0, 2])  # built before recording: a device index made once, as the cell plan keeps them
    with HostSyncRecorder() as rec:
        y = (x[index] * 2 + torch.tensor(3.0, device="cpu")).relu().sum()  # a 0-dim CPU tensor is a kernel argument
        torch.autograd.grad(y, x)
    assert rec.findings == [] and len(rec.ops) > 5


# ----- the autograd stand-in is faithful -----
def test_backward_without_engine_matches_autograd_on_cpu(single_thread):
    """On CPU (real tensors) the graph walk gives the engine's gradients for the fused search network, both
    torch.autograd.grad (architecture step) and .backward() (weight step)."""
    torch.manual_seed(0)
    model = Network(C=4, num_classes=10, layers=3, criterion=nn.CrossEntropyLoss(), backend="fused")
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))
    want_arch = torch.autograd.grad(model._loss(x, y), model.arch_parameters())
    model._loss(x, y).backward()
    want_w = [p.grad.clone() for p in model.weights_parameters()]
    model.zero_grad(set_to_none=True)
    with patched_autograd():
        got_arch = torch.autograd.grad(model._loss(x, y), model.arch_parameters())
        model._loss(x, y).backward()
    for got, want in zip(got_arch, want_arch):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for p, want in zip(model.weights_parameters(), want_w):
        torch.testing.assert_close(p.grad, want, rtol=0, atol=0)


# ----- the search step -----
@pytest.mark.parametrize("network", list(NETWORKS))
def test_fused_search_step_never_syncs_on_cuda(fake_cuda, network):
    """Forward, backward and both optimiser steps of a DARTS / PC-DARTS search step (training mode, every node's
    running statistics updated): after one warm-up step (which fills the device-index cache, as CUDA-graph
    warm-up does), no op syncs or copies between host and device."""
    model, step, batch = _search_step(network)
    step(*batch)
    with HostSyncRecorder() as rec:
        step(*batch)
    assert rec.findings == []
    assert any("proxynas_fast" in op for op in rec.ops) == extension.has_cpu_kernels()  # the compiled ops ran
    assert any("convolution_backward" in op or "bmm" in op for op in rec.ops)  # the backward ran


def _update_running_stats_before_the_fix(bns: Sequence[nn.BatchNorm2d], means, variances) -> None:
    """fused._update_running_stats with its former row selection: the rows of [K, C] statistics picked by
    indexing with Python lists (fault 1)."""
    mean, var = torch.stack(list(means)), torch.stack(list(variances))
    with torch.no_grad():
        by_factor: Dict[float, List[Tuple[int, nn.BatchNorm2d]]] = {}
        for k, b in enumerate(bns):
            by_factor.setdefault(fused._count_batches([b]), []).append((k, b))
        for factor, group in by_factor.items():
            idx = [k for k, _ in group]
            torch._foreach_lerp_([b.running_mean for _, b in group],
                                 [m.to(b.running_mean.dtype) for m, (_, b) in zip(mean[idx], group)], factor)
            torch._foreach_lerp_([b.running_var for _, b in group],
                                 [v.to(b.running_var.dtype) for v, (_, b) in zip(var[idx], group)], factor)


def test_check_catches_the_list_indexed_running_stats_update(fake_cuda, monkeypatch):
    """Fault 1 of issue 12: with the old running-statistics update the same check fails, naming the line."""
    monkeypatch.setattr(fused.kernel_batch_norm, "_update_running_stats", _update_running_stats_before_the_fix)
    model, step, batch = _search_step()
    with torch.no_grad():
        model(batch[0])  # warm-up: builds the cell plans (their device index tensors)
    with pytest.raises(HostSyncError, match=r"_update_running_stats_before_the_fix.*mean\[idx\]"):
        with HostSyncRecorder(), torch.no_grad():
            model(batch[0])


# ----- the second-order (unrolled) architecture step -----
ARCH_SETTINGS = dict(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)


def _unrolled_architect_step():
    """The DARTS second-order architecture step (`Architect`, unrolled=True) on a fused search network, with the
    weight optimiser's momentum buffers populated, as in a search after its first weight step."""
    model, step, batch = _search_step()
    step(*batch)  # one eager step: momentum buffers, gradients, the cell plans
    architect = Architect(model, ARCH_SETTINGS)
    return model, architect, step.weight_optimizer, batch


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_unrolled_architect_step_never_syncs_on_cuda(fake_cuda):
    """Second-order DARTS: the virtual weight step on the unrolled copy, the validation gradient through it and
    the finite-difference Hessian-vector product (R = r / ||v||, kept on the device) run without any host sync
    or transfer (the first step builds the cached unrolled copy, as a warm-up)."""
    model, architect, w_opt, batch = _unrolled_architect_step()
    architect.arch_gradients(*batch, 0.025, w_opt, unrolled=True)
    with HostSyncRecorder() as rec:
        grads, _ = architect.arch_gradients(*batch, 0.025, w_opt, unrolled=True)
    assert rec.findings == []
    assert [g.shape for g in grads] == [a.shape for a in model.arch_parameters()]
    assert sum(op.startswith("aten.convolution_backward") for op in rec.ops) >= 4  # val + 2 finite differences


def _hessian_vector_product_before_the_fix(self, vector, input_train, target_train, r=None):
    """Architect._hessian_vector_product as it was: R = r / float(||v||), one host sync per unrolled step."""
    r = self.finite_difference_scale if r is None else r
    weights = architect_module.weight_parameters(self.model)
    arch = self.model.arch_parameters()
    norm = float(architect_module._flatten(vector).norm())
    if norm == 0.0:
        return [torch.zeros_like(a) for a in arch]
    R = r / norm
    with torch.no_grad():
        for w, v in zip(weights, vector):
            w.add_(v, alpha=R)
    grads_pos = architect_module._grad(self.model._loss(input_train, target_train), arch)
    with torch.no_grad():
        for w, v in zip(weights, vector):
            w.sub_(v, alpha=2 * R)
    grads_neg = architect_module._grad(self.model._loss(input_train, target_train), arch)
    with torch.no_grad():
        for w, v in zip(weights, vector):
            w.add_(v, alpha=R)
    return [(p - n) / (2 * R) for p, n in zip(grads_pos, grads_neg)]


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_check_catches_the_host_side_finite_difference_scale(fake_cuda, monkeypatch):
    """With the former Hessian-vector product (`float(norm)`), the same check fails, naming the line."""
    model, architect, w_opt, batch = _unrolled_architect_step()
    architect.arch_gradients(*batch, 0.025, w_opt, unrolled=True)  # warm-up (fake tensors cannot give float())
    monkeypatch.setattr(Architect, "_hessian_vector_product", _hessian_vector_product_before_the_fix)
    with pytest.raises(HostSyncError, match=r"_hessian_vector_product_before_the_fix.*float\("):
        with HostSyncRecorder():
            architect.arch_gradients(*batch, 0.025, w_opt, unrolled=True)
