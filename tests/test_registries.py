"""The registries (selectors, search strategies, data sets, scorer networks, genotypes) are each a
`proxynas_fast.registry.Registry`:
the list functions name the built-ins, an unknown name gets a one-line error naming the known ones, a newly
decorated function or class is found by name (and removed again after its test), a name cannot be registered
twice, and the registries hold the code itself (functions, classes), never a string naming it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch.nn as nn

from proxynas_fast import darts
from proxynas_fast.data import (DATASET_SOURCES, DATASETS, DatasetError, DatasetInfo, DatasetSource, dataset_info,
                                list_datasets, load_dataset)
from proxynas_fast.data.readers import decode_images, list_image_folder
from proxynas_fast.darts.genotypes import GENOTYPES, Genotype, get_genotype, list_genotypes
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.registry import Registry
from proxynas_fast.scoring.models import SCORERS, create_scorer, list_scorers
from proxynas_fast.search import SearchError, SearchStrategy, get_strategy, list_strategies, resolve_config
from proxynas_fast.search.strategies import STRATEGIES
from proxynas_fast.selection import get_selector, list_selectors, register_selector, select
from proxynas_fast.selection.registry import SELECTORS
from proxynas_fast.train.config import make_config as make_train_config

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = {
    "selection method": (SELECTORS, list_selectors, get_selector, ValueError,
                         ["forgetting", "high_entropy", "kcenter", "low_entropy", "p1", "p2", "p3", "random"]),
    "search strategy": (STRATEGIES, list_strategies, get_strategy, SearchError, ["darts", "darts2", "pcdarts"]),
    "data set": (DATASET_SOURCES, list_datasets, dataset_info, DatasetError,
                 ["cifar10", "cifar100", "svhn", "imagenet"]),
}


@pytest.fixture
def restore_registries():
    """Whatever a test registers is unregistered afterwards."""
    registries = [SELECTORS, STRATEGIES, DATASET_SOURCES]
    saved = [set(r.names()) for r in registries]
    yield
    for registry, names in zip(registries, saved):
        for name in set(registry.names()) - names:
            registry.unregister(name)


@pytest.mark.parametrize("kind", list(BUILT_IN))
def test_list_functions_name_the_built_ins(kind):
    registry, list_names, _, _, expected = BUILT_IN[kind]
    assert list_names() == expected and sorted(registry.names()) == sorted(expected)
    assert registry.kind == kind


@pytest.mark.parametrize("kind", list(BUILT_IN))
def test_unknown_name_gets_one_line_naming_the_known_ones(kind):
    registry, _, get, error, expected = BUILT_IN[kind]
    with pytest.raises(error) as e:
        get("no_such_thing")
    assert str(e.value) == f"unknown {kind} 'no_such_thing'; choose one of {', '.join(registry.names())}"
    assert "\n" not in str(e.value) and all(name in str(e.value) for name in expected)


def test_scorers_and_genotypes_are_registries():
    assert isinstance(SCORERS, Registry) and isinstance(GENOTYPES, Registry)
    assert list_scorers() == sorted(SCORERS.names()) == ["resnet110", "resnet18", "resnet20", "resnet32", "resnet44",
                                                         "resnet50", "resnet56"]
    assert all(SCORERS.get(name).__name__ == name for name in list_scorers())  # the constructors themselves
    assert sum(p.numel() for p in create_scorer("resnet20", 10).parameters()) == 269722
    with pytest.raises(ValueError) as e:
        create_scorer("resnet21", 10)
    assert str(e.value) == f"unknown scorer architecture 'resnet21'; choose one of {', '.join(list_scorers())}"
    assert list_genotypes() == sorted(GENOTYPES.names()) and {"DARTS_V2", "PC_DARTS"} <= set(list_genotypes())
    assert get_genotype("DARTS_V2") is GENOTYPES.get("DARTS_V2") and isinstance(get_genotype("PC_DARTS"), Genotype)
    with pytest.raises(KeyError, match="unknown genotype 'no_such_cell'; known: .*DARTS_V2"):
        get_genotype("no_such_cell")


def test_a_registry_keeps_the_spelling_and_can_unregister():
    registry = Registry("thing")
    registry.register("MixedCase", obj=1)
    registry.register(obj=len)
    assert registry.names() == ["MixedCase", "len"] and list(registry) == registry.names()
    assert registry.get("mixedcase") == 1 and "MIXEDCASE" in registry and dict(registry.items())["MixedCase"] == 1
    assert registry.unregister("mixedCASE") == 1 and registry.names() == ["len"] and "MixedCase" not in registry
    with pytest.raises(ValueError, match="unknown thing 'MixedCase'; choose one of len"):
        registry.unregister("MixedCase")


def test_registries_hold_code_not_strings():
    for name in list_selectors():
        assert callable(get_selector(name).fn) and get_selector(name).fn.__name__.startswith("select_")
    for name in list_strategies():
        strategy = get_strategy(name)
        assert isinstance(strategy, type) and issubclass(strategy, SearchStrategy)
        assert all(isinstance(net, type) and issubclass(net, nn.Module) for net in strategy.networks())
        own = {k: v for k, v in vars(strategy).items() if not k.startswith("__")}
        assert not [k for k, v in own.items() if isinstance(v, str) and k not in ("name", "description")]
    assert get_strategy("darts").networks() == (darts.Network, darts.NetworkImageNetSearch)
    assert get_strategy("pcdarts").networks() == (darts.PCNetwork, darts.PCNetworkImageNetSearch)
    for name in list_datasets():
        source = DATASET_SOURCES.get(name)
        assert isinstance(source, type) and issubclass(source, DatasetSource) and callable(source.load)
        assert source.name == name and DATASETS[name] is source.info is dataset_info(name)


def test_datasets_is_a_read_only_view_of_the_registry():
    assert list(DATASETS) == list_datasets() and len(DATASETS) == 4
    assert DATASETS["svhn"].num_classes == 10 and DATASETS["imagenet"].image_size == 224
    with pytest.raises(KeyError):
        DATASETS["CIFAR10"]  # exact keys, as the dict it replaced
    assert "mnist" not in DATASETS and DATASETS.get("mnist") is None
    with pytest.raises(TypeError):
        DATASETS["mnist"] = DATASETS["cifar10"]  # add a data set by registering its class


def test_a_new_selector_is_found_by_name(restore_registries, reference_entropy_dir):
    @register_selector("middle_test_only", options={"skip": "examples to skip from the top (required)"},
                       required_options=("skip",))
    def select_middle(entropy, count, rng, *, bin_width=None, skip=None):
        """The `count` examples after the `skip` highest entropies."""
        return np.argsort(-entropy, kind="stable")[skip:skip + count]

    table = read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")
    assert "middle_test_only" in list_selectors() and get_selector("MIDDLE_test_only").fn is select_middle
    positions = select("middle_test_only", table.entropy, count=100, skip=10)
    ranked = np.argsort(-table.entropy, kind="stable")
    assert positions.tolist() == sorted(ranked[10:110].tolist())
    with pytest.raises(ValueError, match="needs option"):
        select("middle_test_only", table.entropy, count=100)


def test_a_new_strategy_is_found_by_name(restore_registries, capsys):
    from proxynas_fast.search.__main__ import main

    @STRATEGIES.register()
    class WideDARTS(SearchStrategy):
        """DARTS with a larger batch (test only)"""

        name = "widedarts_test_only"
        defaults = MappingProxyType(dict(batch_size=128))

    assert "widedarts_test_only" in list_strategies() and get_strategy("WideDARTS_Test_Only") is WideDARTS
    config = resolve_config(dict(dataset="cifar10", out="o", selection="random", strategy="widedarts_test_only"))
    assert config.batch_size == 128 and config.strategy == "widedarts_test_only"
    assert WideDARTS.network_class("cifar10") is darts.Network and not WideDARTS.unrolled
    assert main(["--list-strategies"]) == 0
    assert "widedarts_test_only: DARTS with a larger batch (test only) (defaults: batch_size=128)" \
        in capsys.readouterr().out


def test_a_new_data_set_is_found_by_name(restore_registries, cifar10_jpeg_dir):
    @DATASET_SOURCES.register()
    class FirstTenCIFAR(DatasetSource):
        """The first ten CIFAR-10 JPEGs of each class (test only)"""

        info = DatasetInfo("cifar10_first10_test_only", 10, 32, (0.5,) * 3, (0.25,) * 3, 0.5, "resnet20",
                           (0.5,) * 3, (0.25,) * 3)

        @classmethod
        def load(cls, root, split, download):
            files, labels, classes = list_image_folder(root / "cifar10-jpeg" / split)
            keep = np.concatenate([np.flatnonzero(labels == c)[:10] for c in range(len(classes))])
            images = decode_images([files[i] for i in keep], (32, 32))
            return cls.arrays(split, images, labels[keep], classes, root / "cifar10-jpeg" / split)

    name = "cifar10_first10_test_only"
    assert list_datasets()[-1] == name and DATASETS[name] is FirstTenCIFAR.info is dataset_info(name)
    ds = load_dataset(name.upper(), cifar10_jpeg_dir.parent, "test")
    assert ds.name == name and len(ds) == 100 and ds.mean == (0.5,) * 3
    full = load_dataset("cifar10", cifar10_jpeg_dir, "test")
    assert np.array_equal(ds.images[:10], full.images[full.labels == 0][:10])
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_dataset(name, cifar10_jpeg_dir.parent, "dev")
    # The search and training configurations accept it too (they asked a fixed tuple of four names before).
    search = resolve_config({"dataset": name, "out": "runs/x", "selection": "random"})
    assert search.dataset == name
    assert make_train_config("paper", "DARTS_V2", name, "runs/y").dataset == name


def test_a_name_cannot_be_registered_twice(restore_registries):
    with pytest.raises(ValueError, match="selection method 'p1' is already registered"):
        register_selector("P1")(lambda entropy, count, rng, *, bin_width=None: np.arange(count))

    class AnotherDARTS(SearchStrategy):
        """Claims a taken name."""

        name = "darts"

    with pytest.raises(ValueError, match="search strategy 'darts' is already registered"):
        STRATEGIES.register()(AnotherDARTS)

    class AnotherCIFAR(DatasetSource):
        info = DatasetInfo("cifar10", 10, 32, (0.5,) * 3, (0.25,) * 3, 0.5, "resnet20", (0.5,) * 3, (0.25,) * 3)

    with pytest.raises(ValueError, match="data set 'cifar10' is already registered"):
        DATASET_SOURCES.register()(AnotherCIFAR)
    assert get_strategy("darts") is not AnotherDARTS and DATASET_SOURCES.get("cifar10") is not AnotherCIFAR


def test_cifar10_found_in_the_shared_data_folder(shared_dir):
    """The shared folder holds cifar10-jpeg/<split>/<class>/*.jpg: found from its parent, in the original order."""
    ds = load_dataset("cifar10", shared_dir / "data", "train", download=False)
    assert ds.source == str(shared_dir / "data" / "cifar10-jpeg" / "train")
    assert ds.images.shape == (50000, 32, 32, 3) and np.bincount(ds.labels).tolist() == [5000] * 10
    assert ds.mean == DATASETS["cifar10"].train_mean


def test_strategies_and_registries_load_without_torch():
    probe = ("import sys\nfrom proxynas_fast.search.strategies import get_strategy, list_strategies\n"
             "from proxynas_fast.selection.registry import list_selectors\n"
             "s = get_strategy('pcdarts')\nprint(list_strategies(), s.unrolled, dict(s.defaults)['batch_size'], "
             "'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['darts', 'darts2', 'pcdarts'] False 256 False", out.stderr[-2000:]
