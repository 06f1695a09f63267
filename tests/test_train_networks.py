"""The DARTS evaluation networks: reference parameter counts, state_dict layout, drop-path, aux head."""
from __future__ import annotations

import json

import pytest
import torch

from proxynas_fast.darts.genotypes import Genotype, genotype_to_dict, get_genotype
from proxynas_fast.train.networks import (Cell, NetworkCIFAR, NetworkImageNet, build_network, count_parameters,
                                          drop_path)


# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("arch, expected", [
    ("DARTS_V2", 3_349_342),  # DARTS train.py prints "param size = 3.349342MB"
    ("imagenet_DARTS_proxy_histo1_10p", 3_910_726),  # the proxy-data paper's ImageNet-searched cell
])
def test_cifar_parameter_count_matches_darts_reference(arch, expected):
    model = NetworkCIFAR(36, 10, 20, True, get_genotype(arch))
    assert count_parameters(model) == expected
    aux = sum(p.numel() for n, p in model.named_parameters() if n.startswith("auxiliary_head."))
    assert aux > 0 and count_parameters(model, include_auxiliary=True) == expected + aux


def test_imagenet_network_count_and_forward_shape():
    torch.manual_seed(0)
    model = NetworkImageNet(48, 1000, 14, True, get_genotype("DARTS_V2"))
    # DARTS paper, Table 3: 4.7M; the reference code reports 4.718752 MB.
    assert count_parameters(model) == 4_718_752
    x = torch.randn(2, 3, 224, 224)
    model.train()
    model.drop_path_prob = 0.1
    logits, aux = model(x)
    assert logits.shape == (2, 1000) and aux.shape == (2, 1000)
    model.eval()
    with torch.no_grad():
        logits, aux = model(x)
    assert logits.shape == (2, 1000) and aux is None


def test_state_dict_layout_follows_reference_model():
    cifar = NetworkCIFAR(16, 10, 8, True, get_genotype("DARTS_V2")).state_dict()
    for key in ("stem.0.weight", "stem.1.running_mean",
                "cells.0.preprocess0.op.1.weight", "cells.0.preprocess1.op.2.weight",
                "cells.0._ops.0.op.1.weight",  # sep_conv_3x3: first depthwise conv
                "cells.3.preprocess0.conv_1.weight",  # cell after the first reduction (8 // 3 = 2)
                "auxiliary_head.features.2.weight", "auxiliary_head.features.6.weight",
                "auxiliary_head.classifier.weight", "classifier.weight"):
        assert key in cifar, key
    imagenet = NetworkImageNet(16, 100, 5, True, get_genotype("DARTS_V2")).state_dict()
    for key in ("stem0.0.weight", "stem0.3.weight", "stem1.1.weight",
                "cells.0.preprocess0.conv_1.weight",  # stem1 reduced, so input 0 is factorised
                "auxiliary_head.features.5.weight", "classifier.bias"):
        assert key in imagenet, key
    # The reference ImageNet auxiliary head has no BatchNorm after its 768-channel conv.
    assert not any(k.startswith("auxiliary_head.features.6") for k in imagenet)
    cell = NetworkCIFAR(16, 10, 8, False, get_genotype("DARTS_V2")).cells[0]
    assert cell._indices == [0, 1, 0, 1, 1, 0, 0, 2] and cell._concat == [2, 3, 4, 5]
    assert len(cell._ops) == 8


def test_reduction_cells_and_channel_doubling():
    model = NetworkCIFAR(16, 10, 8, True, get_genotype("DARTS_V2"))
    assert [c.reduction for c in model.cells] == [i in (2, 5) for i in range(8)]
    assert model.classifier.in_features == 4 * 16 * 4  # multiplier 4 x (C doubled twice)
    feats = {}
    model.cells[5].register_forward_hook(lambda m, i, o: feats.setdefault("aux_in", o))
    model.train()
    logits, aux = model(torch.randn(3, 3, 32, 32))
    assert feats["aux_in"].shape[-2:] == (8, 8)  # the auxiliary head reads the 8x8 map
    assert aux.shape == logits.shape == (3, 10)
    (logits.sum() + aux.sum()).backward()
    assert model.auxiliary_head.classifier.weight.grad is not None


def test_drop_path_zeroes_whole_examples_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_example = y.flatten(1)
    assert torch.all(per_example == per_example[:, :1])  # one draw per example
    first = per_example[:, 0]
    assert torch.all((first == 0) | torch.isclose(first, torch.tensor(1.0 / 0.75)))
    kept = (per_example[:, 0] > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.03
    assert drop_path(x, 0.0) is x


def _uniform_genotype(op: str) -> Genotype:
    edges = [(op, 0), (op, 1), (op, 0), (op, 1), (op, 1), (op, 2), (op, 0), (op, 3)]
    return Genotype(edges, [2, 3, 4, 5], edges, [2, 3, 4, 5])


def test_drop_path_skips_identity_ops_and_eval_mode():
    torch.manual_seed(0)
    s0, s1 = torch.randn(8, 8, 8, 8), torch.randn(8, 8, 8, 8)
    skip_cell = Cell(_uniform_genotype("skip_connect"), 8, 8, 8, False, False).train()
    torch.manual_seed(1)
    no_drop = skip_cell(s0, s1, 0.0)
    torch.manual_seed(1)
    assert torch.equal(skip_cell(s0, s1, 0.9), no_drop)  # Identity edges are never dropped

    conv_cell = Cell(_uniform_genotype("sep_conv_3x3"), 8, 8, 8, False, False).train()
    torch.manual_seed(1)
    no_drop = conv_cell(s0, s1, 0.0)
    torch.manual_seed(1)
    assert not torch.allclose(conv_cell(s0, s1, 0.9), no_drop)
    conv_cell.eval()
    with torch.no_grad():
        assert torch.equal(conv_cell(s0, s1, 0.9), conv_cell(s0, s1, 0.0))  # no dropping at test time


def test_network_from_genotype_json_path(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({"genotype": genotype_to_dict(get_genotype("PC_DARTS"))}))
    genotype = get_genotype(str(path))
    model = build_network(genotype, "cifar100", 100, 8, 5, False)
    assert isinstance(model, NetworkCIFAR) and not hasattr(model, "auxiliary_head")
    model.eval()
    with torch.no_grad():
        logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100) and aux is None
    assert isinstance(build_network(genotype, "imagenet", 10, 8, 5, True), NetworkImageNet)


def test_channels_last_and_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = NetworkCIFAR(8, 10, 5, True, get_genotype("DARTS_V2")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, _ = model(x)
        cl_model = model.to(memory_format=torch.channels_last)
        out, _ = cl_model(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(out, ref, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, _ = model(x)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.1 * ref.abs().max().item() + 0.05)


def test_too_few_layers_is_rejected():
    with pytest.raises(ValueError, match="layers"):
        NetworkCIFAR(8, 10, 2, False, get_genotype("DARTS_V2"))
