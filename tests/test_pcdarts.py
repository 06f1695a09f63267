"""PC-DARTS: reference layout, partial channels + channel shuffle, edge normalisation, numerics against the
independent functional implementation, genotype rule, backend hook and an architecture step."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from proxynas_fast.darts import (
    PCDARTS_CIFAR_SEARCH,
    PCDARTS_IMAGENET_SEARCH,
    PRIMITIVES,
    Architect,
    PCMixedOp,
    PCNetwork,
    PCNetworkImageNetSearch,
    channel_shuffle,
    edge_normalization,
)
from proxynas_fast.darts import fused
from reference_darts_functional import random_state_dict, reference_forward, reference_layout


# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


def test_full_size_layouts_match_reference():
    model = PCNetwork(16, 10, 8, nn.CrossEntropyLoss())
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(reference_layout(16, 10, 8, k=4))
    assert list(sd) == list(reference_layout(16, 10, 8, k=4))
    assert tuple(sd["cells.0._ops.0._ops.4.op.1.weight"].shape) == (4, 1, 3, 3)  # C/K = 16/4 channels
    assert sum(p.numel() for p in model.parameters()) == 299_578
    assert {n: tuple(a.shape) for n, a in model.arch_state().items()} == {
        "alphas_normal": (14, 8), "alphas_reduce": (14, 8), "betas_normal": (14,), "betas_reduce": (14,)}

    imagenet = PCNetworkImageNetSearch(16, 1000, 8, nn.CrossEntropyLoss())
    assert {k: tuple(v.shape) for k, v in imagenet.state_dict().items()} == \
        dict(reference_layout(16, 1000, 8, k=2, imagenet=True))


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_edge_normalization_is_a_softmax_per_node():
    betas = torch.randn(14, dtype=torch.float64)
    e = edge_normalization(betas, 4)
    starts = [0, 2, 5, 9, 14]
    for a, b in zip(starts, starts[1:]):
        torch.testing.assert_close(e[a:b], torch.softmax(betas[a:b], 0))
        assert float(e[a:b].sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_bypass(stride):
    op = PCMixedOp(8, stride, k=4).double()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    weights = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0)
    out = op(x, weights)
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    # Undo the shuffle: output channel i*4 + g came from concatenated channel g*2 + i.
    unshuffled = torch.empty_like(out)
    for i in range(2):
        for g in range(4):
            unshuffled[:, g * 2 + i] = out[:, i * 4 + g]
    bypass = x[:, 2:] if stride == 1 else nn.functional.max_pool2d(x[:, 2:], 2, 2)
    torch.testing.assert_close(unshuffled[:, 2:], bypass, rtol=0, atol=0)
    mixed = sum(w * o(x[:, :2]) for w, o in zip(weights, op._ops))
    torch.testing.assert_close(unshuffled[:, :2], mixed)


@pytest.mark.parametrize("imagenet", [False, True], ids=["cifar", "imagenet"])
def test_logits_and_arch_grads_match_functional_reference(imagenet):
    gen = torch.Generator().manual_seed(11)
    cls, k, hw = (PCNetworkImageNetSearch, 2, 64) if imagenet else (PCNetwork, 4, 32)
    model = cls(8, 10, 3, nn.CrossEntropyLoss(), k=k).double()
    sd = random_state_dict(reference_layout(8, 10, 3, k=k, imagenet=imagenet), gen)
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=gen, dtype=a.dtype))
    model.train()
    x = torch.randn(2, 3, hw, hw, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, 8])

    logits = model(x)
    nn.functional.cross_entropy(logits, y).backward()
    ref_arch = [a.detach().clone().requires_grad_(True) for a in model.arch_parameters()]
    a_n, a_r, b_n, b_r = ref_arch
    ref_logits = reference_forward(sd, x, a_n, a_r, layers=3, betas_normal=b_n, betas_reduce=b_r, k=k,
                                   imagenet=imagenet)
    nn.functional.cross_entropy(ref_logits, y).backward()

    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-12)
    for mine, ref in zip(model.arch_parameters(), ref_arch):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-8, atol=1e-12)
        assert ref.grad.abs().sum() > 0


def test_genotype_uses_edge_weights():
    model = PCNetwork(8, 10, 3, None)
    sep3, skip, dil5 = (PRIMITIVES.index(n) for n in ("sep_conv_3x3", "skip_connect", "dil_conv_5x5"))
    with torch.no_grad():
        for a in model.arch_parameters():
            a.zero_()
        # Node 1 (edges 2, 3, 4 from inputs 0, 1, 2): by alpha alone inputs 0 and 1 are strongest ...
        model.alphas_normal[2, sep3] = 3.0
        model.alphas_normal[3, skip] = 2.5
        model.alphas_normal[4, dil5] = 2.0
    by_alpha = model.genotype().normal[2:4]
    assert by_alpha == [("sep_conv_3x3", 0), ("skip_connect", 1)]
    with torch.no_grad():
        # ... but a large beta on input 2 and a small one on input 0 change which edges survive.
        model.betas_normal[4] = 2.0
        model.betas_normal[2] = -2.0
    assert model.genotype().normal[2:4] == [("dil_conv_5x5", 2), ("skip_connect", 1)]
    # All-zero reduce weights: ties break as in DARTS (lower inputs first, first non-'none' op).
    assert model.genotype().reduce == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4


def test_pc_backend_dispatch_and_new(monkeypatch):
    calls = []

    def pc_cell_forward(cell, s0, s1, weights, edge_weights):
        calls.append(edge_weights.shape)
        return cell.reference_forward(s0, s1, weights, edge_weights)

    monkeypatch.setattr(fused, "pc_cell_forward", pc_cell_forward)

    model = PCNetwork(8, 10, 3, None, backend="reference")
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    model.backend = "fused"
    torch.testing.assert_close(model(x), expected)
    assert calls == [(14,)] * 3

    clone = model.new()
    assert type(clone) is PCNetwork and clone.backend == "fused" and clone._k == 4
    assert all(torch.equal(a, b) and a is not b for a, b in zip(model.arch_parameters(), clone.arch_parameters()))


def test_first_order_architect_step_updates_alphas_and_betas():
    torch.manual_seed(0)
    model = PCNetwork(8, 10, 3, nn.CrossEntropyLoss())
    arch = Architect(model, PCDARTS_CIFAR_SEARCH)
    assert arch.optimizer.param_groups[0]["lr"] == 6e-4
    before = [a.detach().clone() for a in model.arch_parameters()]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    arch.step(x, y, x, y, 0.1, None, unrolled=False)
    assert all(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))


def test_search_constants_and_validation():
    assert PCDARTS_CIFAR_SEARCH.batch_size == 256 and PCDARTS_CIFAR_SEARCH.arch_begin_epoch == 15
    assert PCDARTS_IMAGENET_SEARCH.arch_learning_rate == 6e-3 and PCDARTS_IMAGENET_SEARCH.batch_size == 1024
    with pytest.raises(ValueError, match="k=3"):
        PCNetwork(8, 10, 3, None, k=3)
