"""proxynas_fast.darts as a drop-in for the reference DARTS code (issue 17).

The reference side is `reference_darts_modules` (the reference's network, Architect and search-loop body, written
from its published behaviour). The runs use real CIFAR-10 images, float64 (so that values compare to rounding
while the data order compares exactly), one thread.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

import reference_darts_modules as ref
from proxynas_fast import extension
from proxynas_fast.darts import (
    Architect,
    Network,
    NetworkImageNetSearch,
    PCNetwork,
    PCNetworkImageNetSearch,
    genotype_from_string,
    genotype_to_dict,
    get_genotype,
)
from reference_darts_functional import reference_forward, reference_layout

pytestmark = pytest.mark.usefixtures("single_thread")

ARGS = argparse.Namespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)
TINY = (2, 10, 3)  # C, classes, layers (cells 1 and 2 reduce); C=2: float64 depthwise convs loop per channel
LR = 0.025
BATCH = 4
TRAIN_STEPS = 3


@contextlib.contextmanager
def default_dtype(dtype):
    """Networks built in `dtype`: construction (and so `new()`) makes and draws tensors in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def float64_default():
    with default_dtype(torch.float64):
        yield


@pytest.fixture(scope="module")
def cifar_images(cifar10_jpeg_dir):
    """The first 2 * TRAIN_STEPS * BATCH training images of the real CIFAR-10 JPEG set, normalised, NCHW,
    average-pooled to 8x8 (float64 supernet steps at 32x32 take ~25 s each on the shared 2-core machine)."""
    n = 2 * TRAIN_STEPS * BATCH
    lines = (cifar10_jpeg_dir / "train_order.txt").read_text().splitlines()[:n]
    images, labels = [], []
    for line in lines:
        _, path, label = line.split("\t")
        images.append(np.asarray(Image.open(cifar10_jpeg_dir / path).convert("RGB"), dtype=np.float64) / 255.0)
        labels.append(int(label))
    # contiguous(): pooling the permuted array gives a channels_last tensor, and a backward pass of the supernet
    # on channels_last 8x8 inputs corrupts the heap in torch 2.14.1 (CPU), with or without this package.
    x = F.avg_pool2d(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), 4).contiguous()
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    return x, torch.tensor(labels)


class RecordingDataset(Dataset):
    """Image/label pairs that log every index fetched: the data order of a run."""

    def __init__(self, images, labels):
        self.images, self.labels, self.fetched = images, labels, []

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.fetched.append(int(i))
        return self.images[i], self.labels[i]


def run_reference_loop(seed, make_model, make_architect, images, unrolled):
    """What a user of the reference `train_search.py` runs, with only the network/Architect classes swapped:
    seed, build the model, split the data 50/50 into two DataLoaders with SubsetRandomSampler, one epoch of
    `train`, in float64. Returns (indices fetched in order, alphas, weights)."""
    with default_dtype(torch.float64):
        return _run_reference_loop(seed, make_model, make_architect, images, unrolled)


def _run_reference_loop(seed, make_model, make_architect, images, unrolled):
    torch.manual_seed(seed)
    criterion = nn.CrossEntropyLoss()
    model = make_model(criterion)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=ARGS.momentum, weight_decay=ARGS.weight_decay)
    data = RecordingDataset(*images)
    split = len(data) // 2
    train_queue = DataLoader(data, batch_size=BATCH, sampler=SubsetRandomSampler(list(range(split))))
    valid_queue = DataLoader(data, batch_size=BATCH, sampler=SubsetRandomSampler(list(range(split, len(data)))))
    architect = make_architect(model, ARGS)
    ref.train(train_queue, valid_queue, model, architect, criterion, optimizer, LR, unrolled)
    return (data.fetched, [a.detach().clone() for a in model.arch_parameters()],
            [p.detach().clone() for p in model.parameters()])


def _reference_network(criterion):
    return ref.Network(*TINY, criterion)


def _project_network(backend):
    return lambda criterion: Network(*TINY, criterion, backend=backend)


def _assert_close(xs, ys, rtol=1e-11, atol=1e-13):  # measured: alphas 2e-16, weights 2e-15 relative
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def _backends():
    return ["reference", pytest.param("fused", marks=pytest.mark.skipif(
        not extension.has_cpu_kernels(), reason="the fused backend needs the compiled CPU kernels"))]


# ----------------------------------------------------------------------------------- the stand-in is the reference
def test_stand_in_has_the_reference_layout_and_arithmetic(float64_default):
    torch.manual_seed(0)
    model = ref.Network(*TINY, nn.CrossEntropyLoss())
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(reference_layout(*TINY))
    assert list(sd) == list(reference_layout(*TINY))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference_forward(sd, x, model.alphas_normal, model.alphas_reduce, 3),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_network_is_built_with_the_reference_draws(dtype):
    """Same seed, same weights and alphas, and the global RNG ends in the same state: building the project's
    Network draws exactly what building the reference's does."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(3)
        theirs = ref.Network(*TINY, nn.CrossEntropyLoss())
        after_theirs = torch.get_rng_state()
        torch.manual_seed(3)
        mine = Network(*TINY, nn.CrossEntropyLoss(), backend="reference")
        after_mine = torch.get_rng_state()
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(after_theirs, after_mine)
    for (k, a), (k2, b) in zip(theirs.state_dict().items(), mine.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert all(torch.equal(a, b) for a, b in zip(theirs.arch_parameters(), mine.arch_parameters()))


@pytest.mark.parametrize("cls", [Network, PCNetwork, NetworkImageNetSearch, PCNetworkImageNetSearch])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_advance_rng_as_new_draws_exactly_what_new_draws(cls, dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = cls(8, 10, 5, nn.CrossEntropyLoss(), backend="reference")
        torch.manual_seed(11)
        model.new()
        after_new = torch.get_rng_state()
        torch.manual_seed(11)
        model.advance_rng_as_new()
        after_advance = torch.get_rng_state()
        torch.manual_seed(11)
        untouched = torch.get_rng_state()
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(after_new, after_advance)
    assert not torch.equal(after_new, untouched)


def test_advance_rng_as_new_draws_what_the_reference_new_draws():
    theirs = ref.Network(*TINY, nn.CrossEntropyLoss())
    mine = Network(*TINY, nn.CrossEntropyLoss(), backend="reference")
    torch.manual_seed(5)
    theirs.new()
    after_theirs = torch.get_rng_state()
    torch.manual_seed(5)
    mine.advance_rng_as_new()
    assert torch.equal(after_theirs, torch.get_rng_state())


# ----------------------------------------------------------------------------------- item 1: any reference network
@pytest.mark.parametrize("unrolled", [False, True], ids=["first_order", "unrolled"])
def test_reference_loop_with_project_architect_on_reference_network(cifar_images, unrolled):
    """The reference loop, the reference network, only the Architect swapped: same data order, same alphas
    and weights (to rounding) as with the reference Architect."""
    theirs = run_reference_loop(7, _reference_network, ref.Architect, cifar_images, unrolled)
    mine = run_reference_loop(7, _reference_network, Architect, cifar_images, unrolled)
    assert mine[0] == theirs[0] and len(mine[0]) == 2 * TRAIN_STEPS * BATCH
    _assert_close(mine[1], theirs[1])
    _assert_close(mine[2], theirs[2])
    # The alphas did move (by about lr per Adam step), so the comparison can tell runs apart.
    with default_dtype(torch.float64):
        torch.manual_seed(7)
        start = ref.Network(*TINY, nn.CrossEntropyLoss()).arch_parameters()
    assert all((a - s).abs().max() > 0.5 * ARGS.arch_learning_rate for a, s in zip(mine[1], start))


def test_architect_works_without_project_only_attributes(cifar_images, float64_default):
    """Nothing beyond the reference interface is read: a network without `weights_parameters`, `backend` or
    `advance_rng_as_new` (the stand-in has none) runs second-order steps with the cached copy (the fresh copy
    per step, replay_rng=True, is the reference-loop test above)."""
    assert not any(hasattr(ref.Network, a) for a in ("weights_parameters", "backend", "advance_rng_as_new"))
    torch.manual_seed(1)
    model = ref.Network(*TINY, nn.CrossEntropyLoss())
    architect = Architect(model, ARGS, replay_rng=False)
    x, y = cifar_images
    before = [a.detach().clone() for a in model.arch_parameters()]
    for _ in range(2):  # the second step refreshes the cached copy
        architect.step(x[:4], y[:4], x[4:8], y[4:8], LR, None, unrolled=True)
    assert all(torch.isfinite(a).all() and not torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))


# ----------------------------------------------------------------------------------- item 2: seeded replay
@pytest.fixture(scope="module")
def reference_run(cifar_images):
    """The reference network and Architect, seed 21, TRAIN_STEPS unrolled steps. One thread here too: module
    fixtures run before the function-scoped `single_thread` (with two, this took 390 s instead of 5 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_reference_loop(21, _reference_network, ref.Architect, cifar_images, unrolled=True)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("backend", _backends())
def test_seeded_run_replays_the_reference_run(cifar_images, reference_run, backend):
    """Project network + project Architect (default: replay_rng=True) against the reference network + reference
    Architect, same seed, several unrolled steps: the same batches in the same order and the same alphas."""
    theirs = reference_run
    mine = run_reference_loop(21, _project_network(backend), Architect, cifar_images, unrolled=True)
    assert mine[0] == theirs[0]
    _assert_close(mine[1], theirs[1])
    _assert_close(mine[2], theirs[2])


def test_without_replay_the_data_order_departs_from_step_three(cifar_images, reference_run):
    """What `replay_rng=False` (the cached copy without the draws) gives up, shown on the same runs: step 1
    builds the copy with a real `new()`, step 2 does not draw, so the architecture batch that step 3 draws
    (`next(iter(valid_queue))`, before its Architect step) comes from another RNG state."""
    theirs = reference_run
    mine = run_reference_loop(21, _project_network("reference"),
                              lambda model, args: Architect(model, args, replay_rng=False), cifar_images,
                              unrolled=True)
    per_step = 2 * BATCH  # one training batch and one architecture batch
    assert mine[0][:2 * per_step] == theirs[0][:2 * per_step]
    assert mine[0][2 * per_step + BATCH:3 * per_step] != theirs[0][2 * per_step + BATCH:3 * per_step]


def test_replay_draws_one_new_per_unrolled_step_and_none_first_order(cifar_images):
    torch.manual_seed(2)
    model = Network(*TINY, nn.CrossEntropyLoss(), backend="reference")
    architect = Architect(model, ARGS)
    x, y = (t[:8].float() if t.is_floating_point() else t[:8] for t in cifar_images)
    for unrolled, expected_news in ((True, 1), (True, 1), (False, 0)):
        state = torch.get_rng_state()
        architect.step(x[:4], y[:4], x[4:], y[4:], LR, None, unrolled=unrolled)
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        for _ in range(expected_news):
            model.new()
        assert torch.equal(after, torch.get_rng_state()), (unrolled, expected_news)
        torch.set_rng_state(after)


# ----------------------------------------------------------------------------------- item 3: printed genotypes
def test_genotype_prints_like_the_reference_and_parses_in_both(tmp_path):
    torch.manual_seed(4)
    theirs = ref.Network(*TINY, nn.CrossEntropyLoss())
    mine = Network(*TINY, nn.CrossEntropyLoss(), backend="reference")
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for a, b in zip(theirs.arch_parameters(), mine.arch_parameters()):
            b.copy_(a.copy_(torch.randn(a.shape, generator=g, dtype=a.dtype)))
    printed_theirs, printed_mine = repr(theirs.genotype()), repr(mine.genotype())
    assert printed_mine == printed_theirs and "normal_concat=range(2, 6)" in printed_mine
    # Theirs parses here (printed or as get_genotype's argument) ...
    assert genotype_from_string(printed_theirs) == mine.genotype()
    assert get_genotype(printed_theirs) == mine.genotype()
    # ... and mine in a reference genotypes.py (a plain namedtuple and Python).
    assert eval(printed_mine, {"Genotype": ref.Genotype}) == theirs.genotype()
    # A list concat (how the reference's genotypes.py writes DARTS_V2) parses to the same genotype.
    listed = printed_theirs.replace("range(2, 6)", "[2, 3, 4, 5]")
    assert genotype_from_string(listed) == mine.genotype()
    # JSON round trip keeps equality with the printed form.
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(genotype_to_dict(mine.genotype())))
    assert get_genotype(path) == mine.genotype() and repr(get_genotype(path)) == printed_theirs


@pytest.mark.parametrize("text, problem", [
    ("Genotype(normal=__import__('os'))", "neither a literal nor range"),
    ("Genotype(normal=[('sep_conv_3x3', 0)] * 8", "not a printed genotype"),
    ("Genotype(normal=[], shape=[])", "unknown Genotype field 'shape'"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('conv_9x9', 1)], normal_concat=range(2, 6), reduce=[], "
     "reduce_concat=range(2, 6))", "unknown operation 'conv_9x9'"),
])
def test_bad_printed_genotype_is_named(text, problem):
    with pytest.raises(ValueError, match=problem) as info:
        genotype_from_string(text, source="cell.txt")
    assert str(info.value).startswith("cell.txt: ") and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------- item 5: _arch_parameters
@pytest.mark.parametrize("cls, names", [(Network, ["alphas_normal", "alphas_reduce"]),
                                        (PCNetwork, ["alphas_normal", "alphas_reduce", "betas_normal",
                                                     "betas_reduce"])])
def test_arch_parameters_attribute_is_the_same_list(cls, names):
    model = cls(4, 10, 3, nn.CrossEntropyLoss(), backend="reference")
    assert model.arch_parameters() is model.arch_parameters() is model._arch_parameters
    assert [id(a) for a in model._arch_parameters] == [id(getattr(model, n)) for n in names]
    model.double()  # dtype moves keep the very tensors the list holds
    assert [id(a) for a in model._arch_parameters] == [id(getattr(model, n)) for n in names]
    assert all(a.dtype == torch.float64 for a in model._arch_parameters)
    twin = copy.deepcopy(model)
    assert [id(a) for a in twin._arch_parameters] == [id(getattr(twin, n)) for n in names]
    # Fork-style code: an optimiser over model._arch_parameters moves model.alphas_normal.
    before = model.alphas_normal.detach().clone()
    opt = torch.optim.SGD(model._arch_parameters, lr=1.0)
    model._loss(torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 2])).backward()
    opt.step()
    assert not torch.equal(before, model.alphas_normal)
