"""The DARTS search network: reference layout, parameter counts, numerics against an independent functional
implementation, genotype parsing, new(), device/dtype moves, the backend hook and the ImageNet variant."""
from __future__ import annotations

import ast
import importlib
import pathlib

import pytest
import torch
import torch.nn as nn

import proxynas_fast.darts as darts_pkg
from devices import needs_cuda
from proxynas_fast.darts import (
    PRIMITIVES,
    Cell,
    Genotype,
    Network,
    NetworkImageNetSearch,
    get_genotype,
)
from proxynas_fast import extension
from proxynas_fast.darts import BACKENDS, CELL_BACKENDS, default_backend, fused
from reference_darts_functional import random_state_dict, reference_forward, reference_layout

# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")


TINY = dict(C=4, num_classes=10, layers=3)  # layers=3: cells 1 and 2 are reduction cells


def _tiny(cls=Network, dtype=torch.float64, **kw):
    cfg = dict(TINY, **kw)
    return cls(cfg.pop("C"), cfg.pop("num_classes"), cfg.pop("layers"), nn.CrossEntropyLoss(), **cfg).to(dtype)


def _random_alphas(model, gen):
    with torch.no_grad():
        for a in model.arch_parameters():
            a.copy_(torch.randn(a.shape, generator=gen, dtype=a.dtype))


# ----------------------------------------------------------------------------------------------- layout
def test_full_size_state_dict_matches_reference_layout():
    model = Network(16, 10, 8, nn.CrossEntropyLoss())
    sd = model.state_dict()
    layout = reference_layout(16, 10, 8)
    assert list(sd) == list(layout)
    assert len(sd) == 4186
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(layout)
    for key, shape in [
        ("stem.0.weight", (48, 3, 3, 3)),
        ("stem.1.weight", (48,)),
        ("stem.1.running_var", (48,)),
        ("cells.0.preprocess0.op.1.weight", (16, 48, 1, 1)),
        ("cells.0._ops.0._ops.4.op.1.weight", (16, 1, 3, 3)),  # edge 0, sep_conv_3x3, first depthwise conv
        ("cells.0._ops.13._ops.7.op.2.weight", (16, 16, 1, 1)),  # last edge, dil_conv_5x5 pointwise
        ("cells.0._ops.0._ops.1.1.running_mean", (16,)),  # max pool's affine-free BN
        ("cells.2._ops.0._ops.3.conv_1.weight", (16, 32, 1, 1)),  # reduction skip = FactorizedReduce
        ("cells.3.preprocess0.conv_2.weight", (16, 64, 1, 1)),  # after a reduction: C/2 per half
        ("classifier.weight", (10, 256)),
    ]:
        assert tuple(sd[key].shape) == shape, key
    assert not any("alphas" in k for k in sd)
    # Alphas: leaf tensors requiring grad, outside parameters() (so the SGD optimiser never sees them).
    params = {id(p) for p in model.parameters()}
    for a in model.arch_parameters():
        assert a.is_leaf and a.requires_grad and id(a) not in params
        assert tuple(a.shape) == (14, len(PRIMITIVES))
        assert a.abs().max() < 0.01  # 1e-3 * randn
    assert len(model.weights_parameters()) == len(list(model.parameters()))


def test_full_size_parameter_counts():
    # What the reference count_parameters reports for the search model (classifier included).
    counts = {n: sum(p.numel() for p in Network(16, n, 8, nn.CrossEntropyLoss()).parameters()) for n in (10, 100)}
    assert counts == {10: 1_930_618, 100: 1_953_748}


def test_reference_checkpoint_loads_strict():
    model = _tiny()
    sd = random_state_dict(reference_layout(**TINY), torch.Generator().manual_seed(0))
    model.load_state_dict(sd, strict=True)
    with pytest.raises(RuntimeError):
        model.load_state_dict({**sd, "alphas_normal": torch.zeros(14, 8)}, strict=True)


# ----------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("imagenet", [False, True], ids=["cifar", "imagenet"])
def test_logits_and_alpha_grads_match_functional_reference(imagenet):
    gen = torch.Generator().manual_seed(1)
    cls = NetworkImageNetSearch if imagenet else Network
    model = _tiny(cls)
    sd = random_state_dict(reference_layout(**TINY, imagenet=imagenet), gen)
    model.load_state_dict(sd, strict=True)
    _random_alphas(model, gen)
    model.train()
    x = torch.randn(2, 3, 64 if imagenet else 32, 64 if imagenet else 32, generator=gen, dtype=torch.float64)
    y = torch.tensor([3, 7])

    logits = model(x)
    nn.functional.cross_entropy(logits, y).backward()

    a_n = model.alphas_normal.detach().clone().requires_grad_(True)
    a_r = model.alphas_reduce.detach().clone().requires_grad_(True)
    ref_logits = reference_forward(sd, x, a_n, a_r, layers=TINY["layers"], imagenet=imagenet)
    nn.functional.cross_entropy(ref_logits, y).backward()

    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.alphas_normal.grad, a_n.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(model.alphas_reduce.grad, a_r.grad, rtol=1e-8, atol=1e-12)
    assert a_r.grad.abs().sum() > 0 and a_n.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- genotype
def _alphas_for(edges_per_node, none_logits=None):
    """Alphas (14 x 8): node i's listed (op, input, logit) entries, 'none' logits per edge, zeros elsewhere."""
    alphas = torch.zeros(14, len(PRIMITIVES))
    start = 0
    for i, chosen in enumerate(edges_per_node):
        for op, j, logit in chosen:
            alphas[start + j, PRIMITIVES.index(op)] = logit
        start += 2 + i
    for edge, logit in (none_logits or {}).items():
        alphas[edge, PRIMITIVES.index("none")] = logit
    return alphas


def test_genotype_from_hand_set_alphas():
    model = Network(4, 10, 3, nn.CrossEntropyLoss())
    normal = _alphas_for([
        [("sep_conv_3x3", 1, 3.0), ("skip_connect", 0, 2.0)],
        [("dil_conv_5x5", 2, 4.0), ("max_pool_3x3", 1, 1.0)],
        [("sep_conv_5x5", 3, 2.0), ("avg_pool_3x3", 1, 1.5)],
        [("dil_conv_3x3", 4, 5.0), ("sep_conv_3x3", 2, 2.5)],
    ], none_logits={
        0: 3.0,  # node 0, input 0: 'none' is the row's largest weight, yet skip_connect is picked
        2: 3.0,  # node 1, input 0: softmax weight 0.74 on 'none' must not make this edge win over input 1
        9: 10.0,
    })
    reduce = _alphas_for([
        [("max_pool_3x3", 0, 2.0), ("skip_connect", 1, 1.0)],
        [("avg_pool_3x3", 0, 3.0), ("dil_conv_3x3", 2, 2.0)],
        [("sep_conv_5x5", 1, 3.0), ("sep_conv_3x3", 3, 2.0)],
        [("max_pool_3x3", 2, 2.0), ("skip_connect", 4, 1.0)],
    ])
    with torch.no_grad():
        model.alphas_normal.copy_(normal)
        model.alphas_reduce.copy_(reduce)
    g = model.genotype()
    assert g == Genotype(
        normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
                ("sep_conv_5x5", 3), ("avg_pool_3x3", 1), ("dil_conv_3x3", 4), ("sep_conv_3x3", 2)],
        normal_concat=range(2, 6),
        reduce=[("max_pool_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 2),
                ("sep_conv_5x5", 1), ("sep_conv_3x3", 3), ("max_pool_3x3", 2), ("skip_connect", 4)],
        reduce_concat=range(2, 6),
    )


def test_genotype_tie_breaking_follows_reference():
    # All-equal alphas: edges keep the lower input index first (stable sort), the first non-'none' op wins.
    model = Network(4, 10, 3, nn.CrossEntropyLoss())
    with torch.no_grad():
        for a in model.arch_parameters():
            a.zero_()
    g = model.genotype()
    assert g.normal == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4
    assert g.reduce == g.normal
    # Equal edge strengths at node 2 except input 3 stronger: the stronger comes first, then input 0.
    with torch.no_grad():
        model.alphas_normal[5 + 3, PRIMITIVES.index("sep_conv_3x3")] = 1.0
    assert model.genotype().normal[4:6] == [("sep_conv_3x3", 3), ("max_pool_3x3", 0)]


def test_genotype_round_trips_through_registry_format(tmp_path):
    from proxynas_fast.darts import genotype_to_dict
    import json

    model = Network(4, 10, 3, nn.CrossEntropyLoss())
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(genotype_to_dict(model.genotype())))
    assert get_genotype(path) == model.genotype()


# ----------------------------------------------------------------------------------------------- new(), to()
def test_new_copies_alphas_and_shares_nothing():
    model = _tiny(backend="reference")
    _random_alphas(model, torch.Generator().manual_seed(2))
    model.backend = "fused"  # only stored here; no forward runs
    clone = model.new()
    assert type(clone) is Network and clone.backend == "fused"
    assert all(c.backend == "fused" for c in clone.cells)
    for a, b in zip(model.arch_parameters(), clone.arch_parameters()):
        assert a is not b and torch.equal(a, b) and b.is_leaf and b.requires_grad
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    mine = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    theirs = {t.untyped_storage().data_ptr() for t in list(clone.parameters()) + list(clone.buffers())}
    assert not mine & theirs
    assert next(clone.parameters()).dtype == torch.float64
    assert not torch.equal(model.stem[0].weight, clone.stem[0].weight)  # fresh weights, as in the reference
    with torch.no_grad():
        clone.alphas_normal.add_(1.0)
    assert not torch.equal(model.alphas_normal, clone.alphas_normal)


def test_dtype_move_keeps_alpha_tensors():
    model = Network(4, 10, 3, nn.CrossEntropyLoss())
    alphas = model.arch_parameters()
    optimizer = torch.optim.Adam(alphas, lr=0.1)
    model.double()
    assert [id(a) for a in model.arch_parameters()] == [id(a) for a in alphas]
    assert all(a.dtype == torch.float64 and a.is_leaf and a.requires_grad for a in model.arch_parameters())
    # The optimiser built before the move still updates the model's alphas.
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    model._loss(x, torch.tensor([0, 1])).backward()
    before = model.alphas_normal.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.alphas_normal)


@needs_cuda
def test_cuda_move_keeps_alpha_tensors():
    model = _tiny(dtype=torch.float32)
    alphas = model.arch_parameters()
    model.cuda()
    assert all(a.is_cuda and a.is_leaf for a in alphas)
    assert [id(a) for a in model.arch_parameters()] == [id(a) for a in alphas]
    model._loss(torch.randn(2, 3, 32, 32, device="cuda"), torch.tensor([0, 1], device="cuda")).backward()
    assert model.alphas_reduce.grad.is_cuda
    assert model.new().alphas_normal.is_cuda


def test_arch_state_round_trip():
    model, other = _tiny(), _tiny()
    _random_alphas(model, torch.Generator().manual_seed(3))
    other.load_arch_state(model.arch_state())
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), other.arch_parameters()))
    with pytest.raises(KeyError, match="alphas_reduce"):
        other.load_arch_state({"alphas_normal": torch.zeros(14, 8)})
    with pytest.raises(ValueError, match="shape"):
        other.load_arch_state({"alphas_normal": torch.zeros(3), "alphas_reduce": torch.zeros(14, 8)})


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError, match="multiplier"):
        Network(4, 10, 3, None, steps=2, multiplier=4)
    with pytest.raises(ValueError, match="layers"):
        Network(4, 10, 0, None)


# ----------------------------------------------------------------------------------------------- backend hook
def test_backend_value_is_checked():
    with pytest.raises(ValueError, match="backend"):
        Network(4, 10, 3, None, backend="cuda")
    model = Network(4, 10, 3, None)
    with pytest.raises(ValueError, match="backend"):
        model.backend = "fast"


def test_backend_rule_picks_the_fast_path_of_the_device(monkeypatch):
    """"auto" is the fused cell exactly where the compiled kernels for the device type exist (a GPU without the
    CUDA kernels, or any other device, gets the reference cell), and follows the network when it moves."""
    assert BACKENDS == ("reference", "fused") == tuple(CELL_BACKENDS.names())
    assert default_backend("cpu") == ("fused" if extension.has_cpu_kernels() else "reference")
    assert default_backend("cuda") == ("fused" if extension.has_cuda_kernels() else "reference")
    assert default_backend(torch.device("meta")) == "reference"
    assert default_backend() == default_backend(torch.get_default_device())
    with torch.device("meta"):
        assert Network(4, 10, 3, None).backend == "reference"
    auto, fused_model = Network(4, 10, 3, None), Network(4, 10, 3, None, backend="Fused")
    assert auto.backend == default_backend("cpu") and fused_model.backend == "fused"
    monkeypatch.setattr(extension, "has_kernels_for", lambda device: False)  # as on a device without kernels
    auto.double()  # any move chooses again
    fused_model.double()
    assert auto.backend == "reference" and all(c.backend == "reference" for c in auto.cells)
    assert auto.new().backend == "reference"  # new() keeps "auto"
    assert fused_model.backend == "fused" and fused_model.new().backend == "fused"  # chosen explicitly: kept


def test_darts_modules_import_nothing_inside_functions():
    """No module of proxynas_fast.darts imports inside a function (the former model_search -> fused -> pcdarts ->
    model_search cycle was held together that way); a new cycle would show up as an ImportError here."""
    nested = []
    root = pathlib.Path(darts_pkg.__file__).parent
    for path in sorted(root.rglob("*.py")):  # the fused/ package's modules too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested += [f"{path.relative_to(root)}:{n.lineno}" for n in ast.walk(node)
                           if isinstance(n, (ast.Import, ast.ImportFrom))]
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        importlib.import_module(f"proxynas_fast.darts.{module}")
    assert nested == []


def test_fused_backend_dispatches_to_cell_forward(monkeypatch):
    calls = []

    def cell_forward(cell, s0, s1, weights):
        calls.append((cell, weights.shape))
        return cell.reference_forward(s0, s1, weights)

    monkeypatch.setattr(fused, "cell_forward", cell_forward)

    model = _tiny(dtype=torch.float32, backend="reference")
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    model.backend = "fused"
    got = model(x)
    assert [c for c, _ in calls] == list(model.cells)
    assert all(shape == (14, len(PRIMITIVES)) for _, shape in calls)
    torch.testing.assert_close(got, expected)
    assert isinstance(model.cells[0], Cell)


# ----------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_search_network_resolutions():
    model = NetworkImageNetSearch(4, 7, 3, nn.CrossEntropyLoss())
    sizes = {}
    for name in ("stem0", "stem1"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape[-1]))
    for idx, cell in enumerate(model.cells):
        cell.register_forward_hook(lambda m, i, o, n=idx: sizes.__setitem__(n, (o.shape[1], o.shape[-1])))
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 7)
    # 224 -> stem0 56 -> stem1 28 -> normal 28 -> reduce 14 -> reduce 7; channels = 4 nodes * C.
    assert sizes == {"stem0": 56, "stem1": 28, 0: (16, 28), 1: (32, 14), 2: (64, 7)}
    assert model.cells[0].preprocess0.__class__.__name__ == "FactorizedReduce"
    assert list(model.state_dict())[:7] == [
        "stem0.0.weight", "stem0.1.weight", "stem0.1.bias", "stem0.1.running_mean", "stem0.1.running_var",
        "stem0.1.num_batches_tracked", "stem0.3.weight"]
    assert type(model.new()) is NetworkImageNetSearch
