"""Architect: settings parsing, first-order gradients and Adam step, and the second-order (unrolled) gradient
checked against an exact double-backward computation in float64."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from proxynas_fast.darts import DARTS_CIFAR_SEARCH, Architect, Network, PCDARTS_CIFAR_SEARCH

# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")

ETA = 0.05
SETTINGS = dict(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)


class SmoothNetwork(Network):
    """The supernet with SiLU for ReLU and average for max pooling: a twice-differentiable loss, so that the
    finite-difference Hessian-vector product can be compared with exact autograd (kinks of ReLU / max-pool make
    a finite difference straddle jumps of the gradient). `new()` rebuilds this class, so the unrolled copy is
    smooth too."""

    def __init__(self, *args, **kwargs):
        kwargs["backend"] = "reference"  # the fused cell implements ReLU / max-pool, not these substitutes
        super().__init__(*args, **kwargs)
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(module, name, nn.SiLU())
                elif isinstance(child, nn.MaxPool2d):
                    setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                       count_include_pad=False))


def _setup(seed=0, hw=16, cls=Network):
    """Tiny float64 supernet (one normal + two reduction cells) with non-trivial alphas, and two batches."""
    torch.manual_seed(seed)
    model = cls(4, 5, 3, nn.CrossEntropyLoss()).double()
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(0.5 * torch.randn_like(a))
    g = torch.Generator().manual_seed(seed + 100)
    batches = [(torch.randn(2, 3, hw, hw, generator=g, dtype=torch.float64), torch.randint(0, 5, (2,), generator=g))
               for _ in range(2)]
    return model, batches


def _sgd_with_momentum(model, batch):
    """Network optimiser after one real step, so its momentum buffers are populated."""
    opt = torch.optim.SGD(model.weights_parameters(), lr=ETA, momentum=SETTINGS["momentum"],
                          weight_decay=SETTINGS["weight_decay"])
    model._loss(*batch).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def _exact_unrolled_gradient(model, train, valid, optimizer):
    """d/dalpha L_val(w'(alpha), alpha) with w' = w - eta (momentum buf + dL_train/dw + wd w), by autograd."""
    names = [n for n, _ in model.named_parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    w = [p.detach().clone().requires_grad_(True) for _, p in model.named_parameters()]

    def loss_at(weights, x, y):
        return F.cross_entropy(functional_call(model, {**dict(zip(names, weights)), **buffers}, (x,)), y)

    grads = torch.autograd.grad(loss_at(w, *train), w, create_graph=True)
    moments = [SETTINGS["momentum"] * optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    w_next = [wi - ETA * (m + gi + SETTINGS["weight_decay"] * wi) for wi, gi, m in zip(w, grads, moments)]
    return torch.autograd.grad(loss_at(w_next, *valid), model.arch_parameters())


def _rel_err(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("kind", ["namespace", "dict", "dataclass"])
def test_settings_sources(kind):
    model = Network(4, 5, 3, None)
    args = {"namespace": argparse.Namespace(**SETTINGS), "dict": dict(SETTINGS),
            "dataclass": DARTS_CIFAR_SEARCH}[kind]
    arch = Architect(model, args)
    group = arch.optimizer.param_groups[0]
    assert group["betas"] == (0.5, 0.999)
    assert group["lr"] == pytest.approx(3e-4) and group["weight_decay"] == pytest.approx(1e-3)
    assert arch.network_momentum == 0.9 and arch.network_weight_decay == pytest.approx(3e-4)
    assert [id(p) for p in group["params"]] == [id(a) for a in model.arch_parameters()]


def test_missing_setting_is_named():
    with pytest.raises(ValueError, match="arch_learning_rate"):
        Architect(Network(4, 5, 3, None), {"momentum": 0.9, "weight_decay": 3e-4, "arch_weight_decay": 1e-3})


def test_search_presets():
    assert (DARTS_CIFAR_SEARCH.batch_size, DARTS_CIFAR_SEARCH.arch_learning_rate) == (64, 3e-4)
    assert (PCDARTS_CIFAR_SEARCH.batch_size, PCDARTS_CIFAR_SEARCH.arch_learning_rate) == (256, 6e-4)


# ----------------------------------------------------------------------------------------------- first order
def test_first_order_step_matches_manual_gradient_and_adam():
    model, (train, valid) = _setup(seed=1)
    arch = Architect(model, SETTINGS)
    alphas_before = [a.detach().clone() for a in model.arch_parameters()]

    # Manual dL_val/dalpha on an identical copy (same weights, alphas, mode).
    twin = model.new()
    twin.load_state_dict(model.state_dict())
    manual = torch.autograd.grad(twin._loss(*valid), twin.arch_parameters())

    grads, loss = arch.arch_gradients(*train, *valid, ETA, None, unrolled=False)
    for g, m in zip(grads, manual):
        torch.testing.assert_close(g, m, rtol=1e-12, atol=1e-15)
    assert float(loss) == pytest.approx(float(twin._loss(*valid).detach()), rel=1e-12)

    arch.step(*train, *valid, ETA, None, unrolled=False)
    # Adam's first step: m_hat = g', v_hat = g'^2 with g' = g + wd * alpha, so alpha -= lr * g' / (|g'| + eps).
    lr, wd, eps = SETTINGS["arch_learning_rate"], SETTINGS["arch_weight_decay"], 1e-8
    for a, a0, g in zip(model.arch_parameters(), alphas_before, manual):
        gp = g + wd * a0
        torch.testing.assert_close(a.detach(), a0 - lr * gp / (gp.abs() + eps), rtol=1e-10, atol=1e-12)
        assert not torch.equal(a.detach(), a0)
    assert all(p.grad is None for p in model.parameters())  # weights' gradients untouched


# ----------------------------------------------------------------------------------------------- second order
def test_finite_difference_hessian_vector_product_matches_autograd():
    model, (train, _) = _setup(seed=2, cls=SmoothNetwork)
    arch = Architect(model, SETTINGS, finite_difference_scale=1e-4)
    weights = model.weights_parameters()
    g = torch.Generator().manual_seed(5)
    vector = [torch.randn(w.shape, generator=g, dtype=w.dtype) * 1e-2 for w in weights]
    saved = [w.detach().clone() for w in weights]

    fd = arch._hessian_vector_product(vector, *train)

    assert all(torch.equal(w, s) for w, s in zip(weights, saved))  # weights restored exactly
    gw = torch.autograd.grad(model._loss(*train), weights, create_graph=True)
    dot = sum((gi * v).sum() for gi, v in zip(gw, vector))
    exact = torch.autograd.grad(dot, model.arch_parameters())
    assert _rel_err(fd, exact) < 1e-6


def test_hessian_vector_product_of_a_zero_vector_is_zero():
    """A validation loss flat in w (v = 0): no second-order correction, exactly zero (R = r / ||v|| is computed
    on the device without a branch, so the zero case must not turn into 0 * inf), and the weights unchanged."""
    model, (train, _) = _setup(seed=2, hw=8)
    arch = Architect(model, SETTINGS)
    weights = model.weights_parameters()
    saved = [w.detach().clone() for w in weights]
    hvp = arch._hessian_vector_product([torch.zeros_like(w) for w in weights], *train)
    assert all(torch.equal(h, torch.zeros_like(a)) for h, a in zip(hvp, model.arch_parameters()))
    assert all(torch.equal(w, s) for w, s in zip(weights, saved))


def test_unrolled_gradient_matches_exact_double_backward():
    model, (train, valid) = _setup(seed=3, hw=8, cls=SmoothNetwork)
    optimizer = _sgd_with_momentum(model, train)
    # A small r isolates the algebra (virtual step, momentum, weight decay, implicit term) from the O(r^2)
    # truncation error of the reference's r = 0.01, which on this tiny net can reach tens of percent.
    precise = Architect(model, SETTINGS, finite_difference_scale=1e-4)
    weights_before = [w.detach().clone() for w in model.weights_parameters()]

    for round_ in range(2):  # the second round reuses the cached unrolled copy with changed alphas
        exact = _exact_unrolled_gradient(model, train, valid, optimizer)
        grads, _ = precise.arch_gradients(*train, *valid, ETA, optimizer, unrolled=True)
        assert _rel_err(grads, exact) < 1e-5, round_
        # The second-order term is far from negligible here, so the comparison can tell it apart.
        first_order, _ = precise.arch_gradients(*train, *valid, ETA, optimizer, unrolled=False)
        assert _rel_err(first_order, exact) > 0.05, round_
        with torch.no_grad():
            model.alphas_normal.add_(0.3 * torch.randn_like(model.alphas_normal))
            model.alphas_reduce.mul_(-1.0)

    darts = Architect(model, SETTINGS)
    assert darts.finite_difference_scale == 0.01
    alphas_before = [a.detach().clone() for a in model.arch_parameters()]
    darts.step(*train, *valid, ETA, optimizer, unrolled=True)
    assert all(torch.equal(w, s) for w, s in zip(model.weights_parameters(), weights_before))
    assert all(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas_before))
    assert all(a.grad is not None for a in model.arch_parameters())


def test_momentum_term_of_the_virtual_step():
    model, (train, _) = _setup(seed=4, hw=8)
    arch = Architect(model, SETTINGS)
    weights = model.weights_parameters()
    fresh = torch.optim.SGD(weights, lr=ETA, momentum=0.9)  # no step yet: no momentum buffers
    assert all(torch.equal(t, torch.zeros_like(w)) for t, w in zip(arch._momentum_term(weights, fresh), weights))
    assert all(torch.equal(t, torch.zeros_like(w)) for t, w in zip(arch._momentum_term(weights, None), weights))
    stepped = _sgd_with_momentum(model, train)
    for t, w in zip(arch._momentum_term(weights, stepped), weights):
        torch.testing.assert_close(t, 0.9 * stepped.state[w]["momentum_buffer"])
