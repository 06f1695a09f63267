"""`--cuda-graphs` plumbing: the search loop's combined steps (`proxynas_fast.search.steps.SearchSteps`) take the
same steps as the loop's own architecture + weight steps. On CPU they run eagerly (the capture itself needs a
GPU; the CUDA test at the end runs there, e.g. from benchmarks/gpu_check.sh)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from devices import needs_cuda
from proxynas_fast.darts import Architect
from proxynas_fast.darts.model_search import Network
from proxynas_fast.darts.pcdarts import PCNetwork
from proxynas_fast.search.config import SearchConfig, resolve_config
from proxynas_fast.search.distributed import DistContext
from proxynas_fast.search.errors import SearchError
from proxynas_fast.search.loop import train_epoch
from proxynas_fast.search.steps import SearchSteps

pytestmark = pytest.mark.usefixtures("single_thread")


def _parts(network_cls, device, seed=3):
    torch.manual_seed(seed)
    criterion = nn.CrossEntropyLoss()
    model = network_cls(4, 5, 3, criterion, backend="fused").to(device)
    config = SearchConfig(dataset="cifar10", out="unused", portion=0.1)
    optimizer = torch.optim.SGD(model.weights_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    return model, criterion, optimizer, Architect(model, config)


def _batches(device, n=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g).to(device), torch.randint(0, 5, (4,), generator=g).to(device))
            for _ in range(n)]


def _epoch(model, criterion, optimizer, architect, device, update_arch, steps_impl):
    ctx = DistContext(0, 1, 0, torch.device(device))
    return train_epoch(model=model, forward_model=model, architect=architect, optimizer=optimizer,
                       criterion=criterion, weight_loader=_batches(device), arch_loader=_batches(device, seed=6),
                       lr=0.05, grad_clip=5.0, update_arch=update_arch, unrolled=False, ctx=ctx,
                       device=torch.device(device), steps_impl=steps_impl)


def _assert_same_state(a_parts, b_parts, rtol, atol):
    """Weights, buffers, alphas and both optimisers' state (momentum buffers, Adam moments and step counts)."""
    (ma, _, oa, aa), (mb, _, ob, ab) = a_parts, b_parts
    for (name, x), y in zip(ma.state_dict().items(), mb.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=name)
    for x, y in zip(ma.arch_parameters(), mb.arch_parameters()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    for opt_a, opt_b in ((oa, ob), (aa.optimizer, ab.optimizer)):
        state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert state_a.keys() == state_b.keys()
        for i in state_a:
            assert state_a[i].keys() == state_b[i].keys()
            for key, x in state_a[i].items():
                y = state_b[i][key]
                torch.testing.assert_close(torch.as_tensor(x).cpu().float(), torch.as_tensor(y).cpu().float(),
                                           rtol=rtol, atol=atol, msg=f"{type(opt_a).__name__} state {i} {key}")


@pytest.mark.parametrize("network_cls", [Network, PCNetwork])
@pytest.mark.parametrize("update_arch", [True, False])
def test_combined_steps_equal_the_loop_steps(network_cls, update_arch):
    loop_parts = _parts(network_cls, "cpu")
    steps_parts = copy.deepcopy(loop_parts)
    m_loop = _epoch(*loop_parts, "cpu", update_arch, None)
    model, criterion, optimizer, architect = steps_parts
    steps = SearchSteps(model, optimizer, architect.optimizer, grad_clip=5.0, cuda_graphs=False)
    m_steps = _epoch(*steps_parts, "cpu", update_arch, steps)
    assert m_steps.examples == m_loop.examples == 12
    assert m_steps.loss == pytest.approx(m_loop.loss, rel=1e-5)
    assert m_steps.accuracy == pytest.approx(m_loop.accuracy)
    _assert_same_state(loop_parts, steps_parts, rtol=1e-5, atol=1e-6)
    if not update_arch:
        for a, b in zip(loop_parts[0].arch_parameters(), _parts(network_cls, "cpu")[0].arch_parameters()):
            torch.testing.assert_close(a, b)  # warm-up epochs leave the alphas alone


@pytest.mark.parametrize("network_cls", [Network, PCNetwork])
def test_the_loops_first_order_step_is_the_architect_step_then_the_weight_step(network_cls):
    """The loop's default first-order step (`SearchStep`, shared with the CUDA-graph path and the benchmark)
    takes DARTS's steps as written out here: `Architect.step` (first order), then zero_grad, forward, backward,
    gradient-norm clip and SGD step of the weights."""
    loop_parts = _parts(network_cls, "cpu")
    model, criterion, optimizer, architect = by_hand = copy.deepcopy(loop_parts)
    _epoch(*loop_parts, "cpu", True, None)
    for (x, y), (x_arch, y_arch) in zip(_batches("cpu"), _batches("cpu", seed=6)):
        architect.step(x, y, x_arch, y_arch, 0.05, optimizer, unrolled=False)
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        nn.utils.clip_grad_norm_(model.weights_parameters(), 5.0)
        optimizer.step()
    _assert_same_state(loop_parts, by_hand, rtol=1e-6, atol=1e-7)


def test_cuda_graphs_refused_where_they_cannot_run():
    model, _, optimizer, architect = _parts(Network, "cpu")
    with pytest.raises(SearchError, match="need a CUDA device"):
        SearchSteps(model, optimizer, architect.optimizer, grad_clip=5.0, cuda_graphs=True)
    base = dict(dataset="cifar10", out="x", portion=0.1, selection="random", cuda_graphs=True)
    with pytest.raises(SearchError, match="second order"):
        resolve_config(dict(base, strategy="darts2"))
    with pytest.raises(SearchError, match="--cuda-graphs"):
        resolve_config(dict(base, device="cpu"))
    assert resolve_config(dict(base, strategy="pcdarts")).cuda_graphs


@needs_cuda
@pytest.mark.parametrize("update_arch", [True, False])
def test_cuda_graph_epoch_equals_eager_epoch_cuda(update_arch):
    eager_parts = _parts(Network, "cuda")
    graph_parts = copy.deepcopy(eager_parts)
    for parts in (eager_parts, graph_parts):
        parts[3].optimizer.param_groups[0]["capturable"] = True
    m_eager = _epoch(*eager_parts, "cuda", update_arch, None)
    model, criterion, optimizer, architect = graph_parts
    steps = SearchSteps(model, optimizer, architect.optimizer, grad_clip=5.0, cuda_graphs=True)
    m_graph = _epoch(*graph_parts, "cuda", update_arch, steps)
    assert steps.captures == 1
    assert m_graph.loss == pytest.approx(m_eager.loss, rel=1e-4)
    _assert_same_state(eager_parts, graph_parts, rtol=1e-4, atol=1e-5)
    for group in optimizer.param_groups:  # a new learning rate forces a new capture
        group["lr"] = 0.01
    _epoch(*graph_parts, "cuda", update_arch, steps)
    assert steps.captures == 2


def test_the_searchs_weight_optimiser_steps_all_weights_at_once_bitwise_like_the_per_tensor_loop():
    """`build_components` makes the weight optimiser with foreach=True: on CPU, torch's default is the
    per-tensor loop (about 4 Python-dispatched ops per weight tensor and step; the ImageNet search network has
    555 of them). The updates are bitwise those of the loop."""
    from proxynas_fast.search.components import build_components

    cpu = torch.device("cpu")
    config = resolve_config(dict(dataset="imagenet", out="unused", selection="random", layers=3, init_channels=8))
    torch.manual_seed(0)
    parts = build_components(config, 10, cpu, DistContext(0, 1, 0, cpu), "fused")
    assert all(group["foreach"] is True for group in parts.optimizer.param_groups)
    mine = list(parts.model.weights_parameters())
    theirs = [p.detach().clone().requires_grad_() for p in mine]
    loop = torch.optim.SGD(theirs, config.learning_rate, momentum=config.momentum,
                           weight_decay=config.weight_decay, foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in zip(mine, theirs):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        parts.optimizer.step()
        loop.step()
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
