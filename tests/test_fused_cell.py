"""The fused DARTS / PC-DARTS cells against the reference cells: outputs, weight gradients, architecture-weight
gradients and BatchNorm running statistics, in training and eval mode."""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from devices import needs_cuda
from proxynas_fast.darts import fused
from proxynas_fast.darts.model_search import Cell, Network
from proxynas_fast.darts.pcdarts import PCNetwork

# Tiny shapes: one intra-op thread (a parallel region costs more than the work; see conftest).
pytestmark = pytest.mark.usefixtures("single_thread")

DTYPE = torch.float64


def _pair(network_cls, seed=0, **kw):
    torch.manual_seed(seed)
    ref = network_cls(**kw, backend="reference").to(DTYPE)  # explicit: "auto" would pick fused with the kernels
    with torch.no_grad():  # random alphas far from uniform, so every candidate matters differently
        for a in ref.arch_parameters():
            a.normal_(0.0, 1.0)
    fus = copy.deepcopy(ref)
    for a_ref, a_fus in zip(ref.arch_parameters(), fus.arch_parameters()):
        with torch.no_grad():
            a_fus.copy_(a_ref)
    fus.backend = "fused"
    return ref, fus


def _run(model, x, y):
    for p in list(model.parameters()) + model.arch_parameters():
        p.grad = None
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    return logits.detach()


def _compare(ref, fus, x, y, atol=1e-9):
    out_ref, out_fus = _run(ref, x, y), _run(fus, x, y)
    torch.testing.assert_close(out_fus, out_ref, atol=atol, rtol=1e-7)
    for (name, p_ref), p_fus in zip(ref.named_parameters(), fus.parameters()):
        assert p_fus.grad is not None, f"no gradient for {name} on the fused path"
        torch.testing.assert_close(p_fus.grad, p_ref.grad, atol=atol, rtol=1e-6, msg=f"gradient of {name}")
    for a_ref, a_fus in zip(ref.arch_parameters(), fus.arch_parameters()):
        torch.testing.assert_close(a_fus.grad, a_ref.grad, atol=atol, rtol=1e-6)
    for (name, b_ref), b_fus in zip(ref.named_buffers(), fus.buffers()):
        torch.testing.assert_close(b_fus, b_ref, atol=atol, rtol=1e-7, msg=f"buffer {name}")


@pytest.mark.parametrize("train", [True, False])
def test_fused_network_matches_reference(train):
    # layers=3: cell 0 normal, cells 1 and 2 reduction (stride-2 edges, FactorizedReduce skips, odd sizes 5 -> 3).
    ref, fus = _pair(Network, C=4, num_classes=5, layers=3)
    ref.train(train)
    fus.train(train)
    x = torch.randn(3, 3, 10, 10, dtype=DTYPE)
    y = torch.tensor([0, 3, 4])
    _compare(ref, fus, x, y)
    _compare(ref, fus, x * 0.5, y)  # second step: running statistics keep matching


def test_fused_shared_pooling_survives_repeated_and_partial_backward():
    """Pooling is shared by the nodes of a cell and recomputed once in the backward (see fused._SharedPool):
    backward twice through a retained graph, and gradients of the alphas alone, equal the reference's."""
    ref, fus = _pair(Network, C=4, num_classes=5, layers=3)
    x, y = torch.randn(2, 3, 8, 8, dtype=DTYPE), torch.tensor([1, 4])
    grads = []
    for model in (ref, fus):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = torch.autograd.grad(loss, model.arch_parameters(), retain_graph=True)
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append((first, [p.grad.clone() for p in model.parameters()]))
    (ref_alpha, ref_w), (fus_alpha, fus_w) = grads
    for a, b in zip(fus_alpha, ref_alpha):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)
    for a, b in zip(fus_w, ref_w):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-6)


def test_fused_cell_channels_last_input():
    torch.manual_seed(1)
    cell = Cell(4, 4, 6, 6, 4, reduction=False, reduction_prev=False).to(DTYPE)
    s0 = torch.randn(2, 6, 6, 6, dtype=DTYPE)
    s1 = torch.randn(2, 6, 6, 6, dtype=DTYPE)
    w = torch.softmax(torch.randn(14, 8, dtype=DTYPE), -1)
    ref = copy.deepcopy(cell).reference_forward(s0, s1, w)
    out = fused.cell_forward(cell, s0.to(memory_format=torch.channels_last),
                             s1.to(memory_format=torch.channels_last), w)
    torch.testing.assert_close(out, ref)


def test_fused_cell_rejects_foreign_structure():
    cell = Cell(2, 2, 4, 4, 4, reduction=False, reduction_prev=False)
    cell._ops[0]._ops[4] = torch.nn.Identity()
    x = torch.randn(1, 4, 4, 4)
    with pytest.raises(fused.FusedCellError, match="edge 0 candidate sep_conv_3x3"):
        fused.cell_forward(cell, x, x, torch.ones(5, 8))


@pytest.mark.parametrize("train", [True, False])
def test_fused_pcdarts_network_matches_reference(train):
    # k=2 partial channels; includes the beta (edge-normalisation) gradients and the strided bypass max-pool.
    ref, fus = _pair(PCNetwork, C=4, num_classes=5, layers=3, k=2)
    ref.train(train)
    fus.train(train)
    x = torch.randn(2, 3, 8, 8, dtype=DTYPE)
    _compare(ref, fus, x, torch.tensor([1, 4]))


@pytest.mark.parametrize("k", [1, 2])
def test_fused_pc_cell_matches_reference_for_k(k):
    """A normal PC-DARTS cell with k=1 (no bypassed channels) and k=2: output and every gradient, betas included.
    (k=1 crashed on the fused path once: the cell combined a bypass part that does not exist.)"""
    from proxynas_fast.darts.pcdarts import PCCell

    torch.manual_seed(3)
    ref = PCCell(4, 4, 8, 8, 8, reduction=False, reduction_prev=False, k=k).to(DTYPE)
    fus = copy.deepcopy(ref)
    s0, s1 = torch.randn(2, 8, 6, 6, dtype=DTYPE), torch.randn(2, 8, 6, 6, dtype=DTYPE)
    outs, grads = [], []
    for cell, forward in ((ref, ref.reference_forward), (fus, lambda *a: fused.pc_cell_forward(fus, *a))):
        w = torch.softmax(torch.randn(14, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(1)), -1)
        beta = torch.rand(14, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
        w.requires_grad_(True)
        beta.requires_grad_(True)
        out = forward(s0, s1, w, beta)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.square().sum(), [w, beta] + list(cell.parameters())))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=1e-8)
    for g_fus, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fus, g_ref, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("other_pool", [False, True], ids=["same_pools", "one_edge_avg_pool"])
def test_fused_pc_reduction_cell_pools_each_bypassed_state_once(other_pool):
    """A PC-DARTS reduction cell: the 2x2 max-pool of a cell input's bypassed channels runs once per input (the
    4 nodes that read it share it), not once per strided edge (8 calls); an edge whose pool computes something
    else (an average pool here) keeps its own. Output and every gradient equal the reference cell's."""
    from proxynas_fast.darts.pcdarts import PCCell

    torch.manual_seed(4)
    ref = PCCell(4, 4, 8, 8, 8, reduction=True, reduction_prev=False, k=2).to(DTYPE)
    if other_pool:
        ref._ops[2].mp = torch.nn.AvgPool2d(2, 2)  # node 1's edge from s0
    fus = copy.deepcopy(ref)
    calls = []
    for e, op in enumerate(fus._ops):
        if op.stride != 1:
            op.mp.register_forward_hook(lambda m, i, o, e=e: calls.append(e))
    s0, s1 = torch.randn(2, 8, 6, 6, dtype=DTYPE), torch.randn(2, 8, 6, 6, dtype=DTYPE)
    outs, grads = [], []
    for cell, forward in ((ref, ref.reference_forward), (fus, lambda *a: fused.pc_cell_forward(fus, *a))):
        w = torch.softmax(torch.randn(14, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(1)), -1)
        beta = torch.rand(14, dtype=DTYPE, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        w.requires_grad_(True)
        out = forward(s0, s1, w, beta)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out.square().sum(), [w, beta] + list(cell.parameters())))
    assert sorted(calls) == ([0, 1, 2] if other_pool else [0, 1])  # edges 0/1 read s0/s1 for node 0
    torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=1e-8)
    for g_fus, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fus, g_ref, atol=1e-9, rtol=1e-7)


def _outputs_and_gradients(model, x, y):
    return [_run(model, x, y)] + [p.grad for p in model.parameters()] + [a.grad for a in model.arch_parameters()]


def _assert_identical(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_cell_plan_is_built_once_per_cell_and_not_shared_by_copies():
    """The fused cell's plan (structure, term layout, index tensors) lives on the cell: built on the first forward
    and reused, never in the state_dict, not carried by deepcopy / pickling / new(); every copy builds its own on
    its own modules and computes exactly what the original computes."""
    ref, fus = _pair(Network, C=4, num_classes=5, layers=3)
    keys = list(ref.state_dict())
    x, y = torch.randn(2, 3, 8, 8, dtype=DTYPE), torch.tensor([1, 4])
    _outputs_and_gradients(fus, x, y)
    plans = [cell.__dict__["_fused_plan"] for cell in fus.cells]
    assert all(p is not None for p in plans) and len({id(p) for p in plans}) == len(plans)
    assert list(fus.state_dict()) == keys
    copied = copy.deepcopy(fus)
    assert all(cell.__dict__["_fused_plan"] is None for cell in copied.cells)
    pickled = io.BytesIO()
    torch.save(fus, pickled)
    pickled.seek(0)
    loaded = torch.load(pickled, weights_only=False)
    assert all(cell.__dict__["_fused_plan"] is None for cell in loaded.cells)
    assert all(cell.__dict__.get("_fused_plan") is None for cell in fus.new().cells)
    want = _outputs_and_gradients(fus, x * 0.5, y)
    assert [cell.__dict__["_fused_plan"] for cell in fus.cells] == plans  # reused, not rebuilt
    for other in (copied, loaded):
        assert other.backend == "fused"
        _assert_identical(_outputs_and_gradients(other, x * 0.5, y), want)
        plan, cell = other.cells[1].__dict__["_fused_plan"], other.cells[1]
        assert plan.term_bns[0] is cell._ops[0]._ops[1][1]  # its own modules, not the original's
    assert list(copied.state_dict()) == keys


def test_cell_plan_follows_mode_changes():
    """One model switched between training and eval mode, and one BatchNorm put in eval mode on its own, keeps
    matching the reference: the plan's per-mode index tensors are picked by the BatchNorms' current modes."""
    ref, fus = _pair(Network, C=4, num_classes=5, layers=3)
    x, y = torch.randn(2, 3, 8, 8, dtype=DTYPE), torch.tensor([1, 4])
    for train in (True, False, True):
        ref.train(train)
        fus.train(train)
        _compare(ref, fus, x, y)
    for model in (ref, fus):
        model.cells[0]._ops[3]._ops[4].op[7].eval()  # node 1's sep_conv_3x3 from node 0: running statistics
    _compare(ref, fus, x, y)


def test_fused_network_bfloat16_autocast():
    torch.manual_seed(5)
    ref = Network(C=4, num_classes=5, layers=3, backend="reference")
    fus = copy.deepcopy(ref)
    fus.backend = "fused"
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, out_fus = ref(x), fus(x)
    assert out_fus.dtype == out_ref.dtype
    torch.testing.assert_close(out_fus.float(), out_ref.float(), atol=0.1, rtol=0.05)
    out_fus.float().sum().backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in fus.arch_parameters())


def test_fused_cell_runs_under_torch_compile():
    torch.manual_seed(6)
    # one node (2 edges) keeps the tracing time small; dynamo traces the node's autograd.Function and kernels
    cell = Cell(1, 1, 4, 4, 4, reduction=False, reduction_prev=False)
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(2, 8), -1).requires_grad_()
    expected = fused.cell_forward(copy.deepcopy(cell), s0, s1, w)
    compiled = torch.compile(lambda a, b, ww: fused.cell_forward(cell, a, b, ww), backend="eager")
    out = compiled(s0, s1, w)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_search_step_eager_and_graph_step_needs_cuda():
    from proxynas_fast.darts.graphed_step import CudaGraphSearchStep, SearchStep

    torch.manual_seed(7)
    model = Network(C=4, num_classes=3, layers=3, backend="fused")  # a normal and two reduction cells
    w_opt = torch.optim.SGD(model.weights_parameters(), lr=0.1)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=0.1)
    batch = [torch.randn(2, 3, 8, 8), torch.tensor([0, 2]), torch.randn(2, 3, 8, 8), torch.tensor([1, 0])]
    before = [a.detach().clone() for a in model.arch_parameters()]
    arch_loss, weight_loss, logits = SearchStep(model, w_opt, a_opt)(*batch)
    assert torch.isfinite(arch_loss) and torch.isfinite(weight_loss) and logits.shape == (2, 3)
    assert all(not torch.equal(b, a) for b, a in zip(before, model.arch_parameters()))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            CudaGraphSearchStep(model, w_opt, a_opt, example_batch=batch)


def _small_search_setup(device, seed=7):
    torch.manual_seed(seed)
    model = Network(C=4, num_classes=3, layers=3, backend="fused").to(device)
    w_opt = torch.optim.SGD(model.weights_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=0.1, betas=(0.5, 0.999), weight_decay=1e-3,
                             capturable=device != "cpu")
    g = torch.Generator().manual_seed(seed)
    batch = [torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0, 2]), torch.randn(2, 3, 8, 8, generator=g),
             torch.tensor([1, 0])]
    return model, w_opt, a_opt, [t.to(device) for t in batch]


def test_training_snapshot_undoes_steps_in_place():
    """Restoring after some steps gives back the same tensors holding the old values, with the optimiser state the
    steps created zeroed, so the next step equals the first step of an untouched copy."""
    from proxynas_fast.darts.graphed_step import SearchStep, TrainingSnapshot

    model, w_opt, a_opt, batch = _small_search_setup("cpu")
    twin, tw_opt, ta_opt, _ = _small_search_setup("cpu")
    ids = [id(t) for t in list(model.parameters()) + list(model.buffers())]
    snapshot = TrainingSnapshot(model, [w_opt, a_opt])
    step = SearchStep(model, w_opt, a_opt)
    for _ in range(3):
        step(*batch)
    snapshot.restore()
    assert ids == [id(t) for t in list(model.parameters()) + list(model.buffers())]
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(model.arch_parameters(), twin.arch_parameters()):  # not in the state_dict (reference layout)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.count_nonzero(v) == 0 for st in w_opt.state.values() for v in st.values() if torch.is_tensor(v))
    step(*batch)
    SearchStep(twin, tw_opt, ta_opt)(*batch)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    for a, b in zip(model.arch_parameters(), twin.arch_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="dampening"):
        TrainingSnapshot(model, [torch.optim.SGD(model.weights_parameters(), lr=0.1, momentum=0.9, dampening=0.1)])


@needs_cuda
def test_cuda_graph_step_follows_eager_steps_cuda():
    """Replays of the captured step take the same steps as eager SearchStep (warm-up undone)."""
    from proxynas_fast.darts.graphed_step import CudaGraphSearchStep, SearchStep

    model, w_opt, a_opt, batch = _small_search_setup("cuda")
    twin, tw_opt, ta_opt, _ = _small_search_setup("cuda")
    graphed, eager = CudaGraphSearchStep(model, w_opt, a_opt, example_batch=batch), SearchStep(twin, tw_opt, ta_opt)
    for i in range(3):
        shifted = [t.roll(i, 0) for t in batch]
        got, want = graphed(*shifted), eager(*shifted)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(model.arch_parameters(), twin.arch_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----- the plan's owner, inference mode, and the backend attribute (review of the cell plan) -----
def test_data_parallel_replica_builds_its_own_plan():
    """nn.DataParallel's replicas copy the cell's __dict__ (plan included) and get their own modules: a replica
    must not run the original's plan (on another GPU it would read the original's weights and update the
    original's BatchNorm statistics). `_replicate_for_data_parallel` is the step DataParallel takes per replica."""
    _, fus = _pair(Network, C=4, num_classes=5, layers=3)
    x, y = torch.randn(2, 3, 8, 8, dtype=DTYPE), torch.tensor([1, 4])
    _outputs_and_gradients(fus, x, y)
    cell = fus.cells[1]
    replica = cell._replicate_for_data_parallel()
    assert replica.__dict__["_fused_plan"] is cell.__dict__["_fused_plan"]  # what DataParallel hands over
    plan = fused.cell_plan(replica)
    assert plan is not cell.__dict__["_fused_plan"] and plan.owner() is replica
    assert fused.cell_plan(cell) is cell.__dict__["_fused_plan"]  # the original keeps its own
    fused.drop_plan(fus)
    assert all("_fused_plan" not in c.__dict__ for c in fus.cells)
    _outputs_and_gradients(fus, x, y)  # rebuilt on the next forward


def test_plan_made_under_inference_mode_still_trains():
    """A first forward under torch.inference_mode() (a quick check of a fresh model) must not leave inference
    tensors in the plan: the next training step saves them for backward."""
    ref, fus = _pair(Network, C=4, num_classes=5, layers=3)
    x, y = torch.randn(2, 3, 8, 8, dtype=DTYPE), torch.tensor([1, 4])
    with torch.inference_mode():
        fus(x)
        ref(x)
    _compare(ref, fus, x, y)


def test_refused_backend_name_keeps_auto():
    """Setting an unknown backend raises and changes nothing: a network on "auto" stays on "auto"."""
    model = Network(4, 5, 3, None, backend="auto")
    before = model.backend
    with pytest.raises(ValueError, match="bogus"):
        model.backend = "bogus"
    assert model.backend == before and model.__dict__["_backend_auto"] is True
    assert model.new().__dict__["_backend_auto"] is True


def test_network_saved_before_backend_auto_existed_still_makes_new():
    """A whole Network pickled by an earlier version has no `_backend_auto`: `new()` (the second-order
    Architect's copy) must still work, keeping its explicit backend."""
    model = Network(4, 5, 3, None, backend="reference")
    del model.__dict__["_backend_auto"]
    assert model.new().backend == "reference"


def test_default_backend_without_get_default_device(monkeypatch):
    """torch < 2.3 has no torch.get_default_device: default_backend() still answers (the CPU rule here)."""
    from proxynas_fast import extension
    from proxynas_fast.darts.model_search import default_backend

    monkeypatch.delattr(torch, "get_default_device", raising=False)
    assert default_backend() == ("fused" if extension.has_kernels_for(torch.device("cpu")) else "reference")


def test_fused_imagenet_network_runs_its_stem_in_channels_last_and_matches_reference():
    """The fused backend runs the ImageNet stem in channels_last on CPU (float32), the reference backend in NCHW;
    the networks still agree (outputs, every gradient, running statistics) to float32 rounding."""
    from proxynas_fast.darts.model_search_imagenet import PCNetworkImageNetSearch

    torch.manual_seed(0)
    ref = PCNetworkImageNetSearch(C=4, num_classes=5, layers=3, backend="reference")
    fus = copy.deepcopy(ref)
    fus.backend = "fused"
    layouts = {}
    def record(name):
        def hook(module, args):
            layouts[name] = args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()
        return hook

    for name, model in (("reference", ref), ("fused", fus)):
        model.stem0[0].register_forward_pre_hook(record(name))
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])
    out_ref, out_fus = _run(ref, x, y), _run(fus, x, y)
    assert layouts == {"reference": False, "fused": True}
    torch.testing.assert_close(out_fus, out_ref, atol=1e-4, rtol=1e-4)
    for (name, p_ref), p_fus in zip(ref.named_parameters(), fus.parameters()):
        torch.testing.assert_close(p_fus.grad, p_ref.grad, atol=1e-4, rtol=1e-3, msg=f"gradient of {name}")
    for a_ref, a_fus in zip(ref.arch_parameters(), fus.arch_parameters()):
        torch.testing.assert_close(a_fus.grad, a_ref.grad, atol=1e-4, rtol=1e-3)
    for (name, b_ref), b_fus in zip(ref.named_buffers(), fus.buffers()):
        torch.testing.assert_close(b_fus, b_ref, atol=1e-4, rtol=1e-4, msg=f"buffer {name}")


@pytest.mark.parametrize("dtype, backend, channels_last", [
    (torch.float32, "fused", True), (torch.bfloat16, "fused", True), (torch.float64, "fused", False),
    (torch.float32, "reference", False), (torch.bfloat16, "reference", False)])
def test_imagenet_stem_layout_follows_backend_and_dtype(dtype, backend, channels_last):
    """channels_last only where oneDNN computes the stem (float32, bfloat16) and only for the fused backend."""
    from proxynas_fast.darts.model_search_imagenet import PCNetworkImageNetSearch

    model = PCNetworkImageNetSearch(C=4, num_classes=5, layers=3, backend=backend).to(dtype)
    seen = []
    model.stem0[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()) and None)
    with torch.no_grad():
        s0, s1 = model._stem_forward(torch.randn(2, 3, 32, 32, dtype=dtype))
    assert seen == [not channels_last]
    assert s1.is_contiguous(memory_format=torch.channels_last) == channels_last


class _OpNames(TorchDispatchMode):
    """Records the name of every ATen / custom op that runs inside it (may be entered more than once)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_grouped_inner_batch_norm_runs_on_the_kernels_and_matches_batch_norm(dtype, momentum):
    """The separable convolutions' inner BatchNorms of all edges reading a node (`fused._batch_norm_group`) run
    on the mixed-node kernels on CPU (aten's batch norm is 2-6x slower there), with the output, the input
    gradient and the running statistics (and their counters) of E nn.BatchNorm2d modules."""
    torch.manual_seed(5)
    E, C = 3, 4
    bns = [torch.nn.BatchNorm2d(C, affine=False, momentum=momentum) for _ in range(E)]
    refs = copy.deepcopy(bns)
    y = (torch.randn(5, E * C, 6, 7, dtype=torch.float64) * 3 + 1).to(dtype).requires_grad_()
    g = torch.randn(5, E * C, 6, 7, dtype=torch.float64).to(dtype)
    seen = _OpNames()
    for step in range(2):
        with seen:
            out = fused._batch_norm_group(y, bns)
            (gy,) = torch.autograd.grad(out, y, g)
        y64 = y.detach().double().requires_grad_()
        want = torch.cat([bn.double()(part) for bn, part in zip(refs, y64.split(C, dim=1))], dim=1)
        (want_g,) = torch.autograd.grad(want, y64, g.double())
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else \
            dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
        assert out.dtype == dtype and gy.dtype == dtype
        torch.testing.assert_close(out.double(), want, **tol)
        torch.testing.assert_close(gy.double(), want_g, **tol)
        for bn, ref in zip(bns, refs):
            assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
            # the modules' running statistics are float32 (the reference copies compute in float64)
            torch.testing.assert_close(bn.running_mean.double(), ref.running_mean, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(bn.running_var.double(), ref.running_var, rtol=1e-6, atol=1e-6)
        y = (y.detach() * 0.5).requires_grad_()
    assert "channel_moments" in seen.names and "channel_affine_combine" in seen.names
    assert not any(name.startswith("native_batch_norm") or name.startswith("_native_batch_norm")
                   for name in seen.names)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kind", ["relu_conv_bn", "factorized_reduce_even", "factorized_reduce_odd"])
def test_fused_preprocessing_matches_the_module_and_normalises_on_the_kernels(kind, train):
    """A cell's preprocess0/1 on the fused path (`fused._preprocess`): the output, the gradients of the input and
    the convolution weights and the running statistics equal the module's own forward; in training mode on CPU
    the BatchNorm runs on the mixed-node kernels, not aten's batch norm."""
    from proxynas_fast.darts.operations import FactorizedReduce, ReLUConvBN

    torch.manual_seed(6)
    module = (ReLUConvBN(6, 4, 1, 1, 0, affine=False) if kind == "relu_conv_bn"
              else FactorizedReduce(6, 4, affine=False)).to(DTYPE).train(train)
    ref = copy.deepcopy(module)
    size = 7 if kind.endswith("odd") else 8
    x = torch.randn(3, 6, size, size, dtype=DTYPE, requires_grad=True)
    seen = _OpNames()
    with seen:
        out = fused._preprocess(module, x)
    want = ref(x)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    got_g = torch.autograd.grad(out, [x] + list(module.parameters()), g)
    want_g = torch.autograd.grad(want, [x] + list(ref.parameters()), g)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(module.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
    uses_aten_bn = any("batch_norm" in name for name in seen.names)
    assert uses_aten_bn == (not train)
    if kind != "relu_conv_bn":  # FactorizedReduce: one 2x2 stride-2 convolution, the input never sliced
        assert seen.names.count("convolution") == 1 and "slice" not in seen.names


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_stem_batch_norm_runs_on_the_kernels_in_either_layout_and_matches_the_module(dtype, affine, layout):
    """The fused backend's stems run their BatchNorms (`fused.batch_norm`) on the mixed-node kernels, with weight
    and bias, in place in channels_last (aten's channels_last backward took ~2.5x its NCHW time at the ImageNet
    stem's [32, 24, 112, 112]): output (in the input's layout), input, weight and bias gradients and the running
    statistics of the module's; in eval mode it is the module itself."""
    torch.manual_seed(6)
    C = 5
    bn = torch.nn.BatchNorm2d(C, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(bn).double()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y = (torch.randn(4, C, 6, 7, dtype=torch.float64) * 3 + 1).to(dtype).contiguous(memory_format=fmt)
    g = torch.randn(4, C, 6, 7, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else \
        dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    for training in (True, True, False):
        bn.train(training)
        ref.train(training)
        x = y.detach().requires_grad_()
        seen = _OpNames()
        with seen:
            out = fused.batch_norm(x, bn)
            params = [x] + ([bn.weight, bn.bias] if affine else [])
            grads = torch.autograd.grad(out, params, g)
        x64 = y.detach().double().requires_grad_()
        want = ref(x64)
        want_grads = torch.autograd.grad(want, [x64] + ([ref.weight, ref.bias] if affine else []), g.double())
        assert out.dtype == dtype and out.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(out.double(), want, **tol)
        for got, w in zip(grads, want_grads):
            torch.testing.assert_close(got.double(), w, **tol)
        assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked)
        torch.testing.assert_close(bn.running_mean.double(), ref.running_mean, **tol)
        torch.testing.assert_close(bn.running_var.double(), ref.running_var, **tol)
        on_kernels = "channel_moments" in seen.names and "channel_affine_combine" in seen.names
        assert on_kernels == training
        assert training == (not any("native_batch_norm" in name for name in seen.names))


def test_affine_kernel_batch_norm_gradcheck():
    torch.manual_seed(7)
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
        w = torch.rand(4, dtype=torch.float64).add_(0.5).requires_grad_()
        b = torch.randn(4, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda *a: fused._BatchNormBatchStats.apply(*a, 1e-5)[0], (y, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_batch_norm_with_its_relu_folded_in_matches_the_modules(dtype, affine, layout):
    """`fused.batch_norm(x, bn, relu=True)` (the ImageNet stem's BN + ReLU) and `_batch_norm_group(..., relu=True)`
    (the separable convolutions' inner BN + ReLU) equal relu(bn(x)): output, input/weight/bias gradients, running
    statistics. In training on CPU the ReLU runs inside the kernels: no relu and no threshold_backward op."""
    torch.manual_seed(8)
    C = 6
    bn = torch.nn.BatchNorm2d(C, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(-1.5, 1.5)  # negative scales flip which side the ReLU keeps
            bn.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(bn).double()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y = (torch.randn(4, C, 6, 7, dtype=torch.float64) * 3 + 1).to(dtype).contiguous(memory_format=fmt)
    g = torch.randn(4, C, 6, 7, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for training in (True, False):
        bn.train(training)
        ref.train(training)
        runs = [lambda x: fused.batch_norm(x, bn, relu=True)]
        if not affine:  # the groups are the search cells' affine-free BatchNorms
            runs.append(lambda x: fused._batch_norm_group(x, [bn], relu=True))
        for run in runs:
            x = y.detach().requires_grad_()
            seen = _OpNames()
            params = [bn.weight, bn.bias] if affine else []
            with seen:
                out = run(x)
                grads = torch.autograd.grad(out, [x] + params, g)
            x64 = y.detach().double().requires_grad_()
            want = torch.relu(ref(x64))
            want_grads = torch.autograd.grad(want, [x64] + ([ref.weight, ref.bias] if affine else []), g.double())
            assert 0 < int((out == 0).sum()) < out.numel()
            torch.testing.assert_close(out.double(), want, **tol)
            for got, w in zip(grads, want_grads):
                torch.testing.assert_close(got.double(), w, **tol)
            torch.testing.assert_close(bn.running_mean.double(), ref.running_mean, **tol)
            torch.testing.assert_close(bn.running_var.double(), ref.running_var, **tol)
            relu_ops = [n for n in seen.names if n.startswith("relu") or n == "threshold_backward"]
            assert (relu_ops == []) == training, relu_ops


def test_folded_relu_batch_norm_gradcheck():
    torch.manual_seed(9)
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = torch.randn(3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(4, dtype=torch.float64).requires_grad_()
        b = torch.randn(4, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda *a: fused._BatchNormBatchStats.apply(*a, 1e-5, True)[0], (y, w, b))


@pytest.mark.parametrize("net", ["cifar", "imagenet"])
def test_fused_networks_fold_every_relu_that_follows_a_batch_norm(net):
    """In training on CPU, the separable convolutions' inner BN + ReLU and the ImageNet stem's BN + ReLU run as
    one kernel BatchNorm, and each cell output's ReLU is computed once for the two cells that read it
    (`fused.shared_relus`): the ReLUs a fused network still applies are one per state that edges read (shared by
    all the state's candidates) and one per cell output read by a later cell (the CIFAR stem's output is both
    inputs of the first cell; the ImageNet stem0's output is relu'd once for stem1 and the first cell); each
    has one backward."""
    from proxynas_fast.darts.model_search_imagenet import PCNetworkImageNetSearch

    size = 32 if net == "cifar" else 64
    counts = {}
    for backend in ("reference", "fused"):
        torch.manual_seed(0)
        model = (Network(4, 5, 3, backend=backend) if net == "cifar" else
                 PCNetworkImageNetSearch(C=4, num_classes=5, layers=3, backend=backend))
        seen = _OpNames()
        x, y = torch.randn(2, 3, size, size), torch.tensor([1, 4])
        with seen:
            torch.nn.functional.cross_entropy(model(x), y).backward()
        counts[backend] = {n: seen.names.count(n) for n in ("relu_", "relu", "threshold_backward")}
    steps, cells = 4, 3
    expected = cells * (steps + 1) + cells + (1 if net == "imagenet" else 0)
    fused_relus = counts["fused"]["relu"] + counts["fused"]["relu_"]
    assert fused_relus == expected == counts["fused"]["threshold_backward"], counts
    assert counts["reference"]["relu"] + counts["reference"]["relu_"] > expected + cells * 2 * (steps + 1)


@pytest.mark.parametrize("reduction", [False, True])
def test_fused_cell_backward_concatenates_no_gradients(reduction):
    """Each edge's last pointwise convolution output is a tensor of its own (`pw_conv2d_groups`), so the backward
    of a fused DARTS cell joins no per-edge gradients of the convolutional candidates (a split of one grouped
    output made a cat per candidate type and state in its backward), and the gradients equal the reference
    cell's."""
    torch.manual_seed(2)
    cell = Cell(4, 4, 6, 6, 4, reduction=reduction, reduction_prev=False).to(DTYPE)
    ref = copy.deepcopy(cell)
    s0, s1 = (torch.randn(2, 6, 8, 8, dtype=DTYPE, requires_grad=True) for _ in range(2))
    w = torch.softmax(torch.randn(14, 8, dtype=DTYPE), -1).requires_grad_()
    out = fused.cell_forward(cell, s0, s1, w)
    g = torch.randn_like(out)
    seen = _OpNames()
    cats = []

    class Cats(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.cat:
                cats.append([tuple(t.shape) for t in args[0]])
            return func(*args, **(kwargs or {}))

    with seen, Cats():
        got = torch.autograd.grad(out, [s0, s1, w] + list(cell.parameters()), g)
    assert "pw_conv2d_groups_backward" in seen.names
    # what is left: the per-node weight vectors (1-D), and in a reduction cell the strided skips of each input
    # state (one aten convolution for the edges leaving it, split)
    assert len([c for c in cats if len(c[0]) == 4]) == (2 if reduction else 0), cats
    want = torch.autograd.grad(ref.reference_forward(s0, s1, w), [s0, s1, w] + list(ref.parameters()), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("k", [2, 4])
def test_shuffled_join_is_the_channel_shuffle_of_the_concatenation(k):
    """A PC-DARTS node's output, `_ShuffledJoin` (one pass each way), is channel_shuffle(cat([mixed, bypass]), k):
    forward and gradients, in double (gradcheck) and float32, also for a non-contiguous incoming gradient."""
    from proxynas_fast.darts.operations import channel_shuffle

    torch.manual_seed(4)
    N, c, H, W = 2, 3, 4, 5
    mixed = torch.randn(N, c, H, W, dtype=DTYPE, requires_grad=True)
    bypass = torch.randn(N, (k - 1) * c, H, W, dtype=DTYPE, requires_grad=True)
    out = fused._ShuffledJoin.apply(mixed, bypass, k)
    want = channel_shuffle(torch.cat([mixed, bypass], dim=1), k)
    assert torch.equal(out, want) and out.is_contiguous()
    g = torch.randn(N, H, W, k * c, dtype=DTYPE).permute(0, 3, 1, 2)  # channels_last: not contiguous
    for a, b in zip(torch.autograd.grad(out, [mixed, bypass], g), torch.autograd.grad(want, [mixed, bypass], g)):
        assert torch.equal(a, b)
    assert torch.autograd.gradcheck(lambda m, b: fused._ShuffledJoin.apply(m, b, k), (mixed, bypass))
    m32, b32 = mixed.detach().float(), bypass.detach().float()
    assert torch.equal(fused._ShuffledJoin.apply(m32, b32, k), channel_shuffle(torch.cat([m32, b32], 1), k))


def test_shared_relu_computes_each_tensors_relu_once_inside_the_context():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = x * 2
    assert fused.shared_relu(y) is not fused.shared_relu(y)  # outside: every call
    with fused.shared_relus():
        r = fused.shared_relu(y)
        assert fused.shared_relu(y) is r and torch.equal(r, torch.relu(y))
        with torch.no_grad():
            assert fused.shared_relu(y) is not r  # another grad mode
        z = y.detach().clone()
        rz = fused.shared_relu(z)
        z.mul_(-1)  # changed in place: computed again
        assert fused.shared_relu(z) is not rz and torch.equal(fused.shared_relu(z), torch.relu(z))
        with torch.inference_mode():
            t = torch.randn(3)
            assert torch.equal(fused.shared_relu(t), torch.relu(t))
    (r.sum() * 2 + fused.shared_relu(y).sum()).backward()
    torch.testing.assert_close(x.grad, 3 * 2 * (y > 0).to(x.dtype))  # d(2 relu(y) + relu(y))/dx, y = 2x


@pytest.mark.parametrize("net", ["cifar", "imagenet"])
def test_fused_stems_run_their_batch_norms_on_the_kernels(net):
    """Both stems (CIFAR: conv, BN; ImageNet: three conv/BN in channels_last) of a fused network in training mode
    run no aten batch norm on CPU; the reference backend keeps the modules'."""
    from proxynas_fast.darts import Network
    from proxynas_fast.darts.model_search_imagenet import PCNetworkImageNetSearch

    size = 32 if net == "cifar" else 64
    for backend in ("fused", "reference"):
        torch.manual_seed(0)
        model = (Network(4, 5, 3, backend=backend) if net == "cifar" else
                 PCNetworkImageNetSearch(C=4, num_classes=5, layers=3, backend=backend))
        seen = _OpNames()
        with seen:
            s0, s1 = model._stem_forward(torch.randn(2, 3, size, size))
        aten_bn = [name for name in seen.names if "native_batch_norm" in name]
        assert (aten_bn == []) == (backend == "fused"), (backend, aten_bn)


def test_fused_stems_still_run_the_hooks_of_their_modules():
    """A hook on a stem, one of its modules, or a global module hook makes the fused stem call its modules as
    the reference does (so that every hook runs); the values are the same either way."""
    from proxynas_fast.darts.model_search_imagenet import PCNetworkImageNetSearch

    torch.manual_seed(0)
    model = PCNetworkImageNetSearch(C=4, num_classes=5, layers=3, backend="fused")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model._stem_forward(x)
        calls = []
        handles = [model.stem0.register_forward_hook(lambda m, i, o: calls.append("stem0")),
                   model.stem1[2].register_forward_pre_hook(lambda m, i: calls.append("stem1.bn"))]
        hooked = model._stem_forward(x)
        for h in handles:
            h.remove()
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
        try:
            globally = model._stem_forward(x)
        finally:
            handle.remove()
    assert calls[:2] == ["stem0", "stem1.bn"] and "BatchNorm2d" in calls[2:]
    for a, b, c in zip(plain, hooked, globally):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
