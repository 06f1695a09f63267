"""Search configuration: paper/strategy/preset defaults, the command line, strategies, backend choice, and the
errors raised before any data is read."""
from __future__ import annotations


import pytest

from proxynas_fast.darts import (DARTS_CIFAR_SEARCH, PCDARTS_CIFAR_SEARCH, Network, NetworkImageNetSearch,
                                 PCNetwork, PCNetworkImageNetSearch)
from proxynas_fast.search import (PAPER_DEFAULTS, SearchConfig, SearchError, build_parser, default_backend,
                                  get_strategy, list_strategies, resolve_config)
from proxynas_fast.search.__main__ import main
from proxynas_fast.search.cli_args import overrides_from_args

BASE = {"dataset": "cifar10", "out": "runs/x", "entropy_file": "e.txt"}


def cli_overrides(*argv):
    return overrides_from_args(build_parser().parse_args(list(argv)))


def test_paper_defaults_are_the_issue_numbers_and_match_darts_module():
    cfg = resolve_config(BASE)
    expected = dict(epochs=50, batch_size=64, learning_rate=0.025, learning_rate_min=0.001, momentum=0.9,
                    weight_decay=3e-4, arch_learning_rate=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                    grad_clip=5.0, layers=8, init_channels=16, arch_begin_epoch=0, portion=0.1,
                    weight_fraction=0.5, strategy="darts", selection="p1")
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert {k: getattr(cfg, k) for k in PAPER_DEFAULTS} == PAPER_DEFAULTS
    # Dataclass defaults are the paper's too (a config built without resolve_config agrees).
    plain = SearchConfig(dataset="cifar10", out="x")
    assert {k: getattr(plain, k) for k in PAPER_DEFAULTS} == PAPER_DEFAULTS
    for key in ("batch_size", "learning_rate", "learning_rate_min", "momentum", "weight_decay", "epochs",
                "init_channels", "layers", "grad_clip", "arch_learning_rate", "arch_weight_decay"):
        assert getattr(cfg, key) == getattr(DARTS_CIFAR_SEARCH, key), key


def test_pcdarts_carries_its_own_defaults_and_flags_still_win():
    cfg = resolve_config(dict(BASE, strategy="pcdarts"))
    assert (cfg.batch_size, cfg.learning_rate, cfg.arch_learning_rate, cfg.arch_begin_epoch) == (256, 0.1, 6e-4, 15)
    for key in ("batch_size", "learning_rate", "learning_rate_min", "arch_learning_rate", "arch_begin_epoch",
                "weight_decay", "arch_weight_decay"):
        assert getattr(cfg, key) == getattr(PCDARTS_CIFAR_SEARCH, key), key
    cfg = resolve_config(dict(BASE, **cli_overrides("--strategy", "pcdarts", "--batch-size", "32", "--lr", "0.05")))
    assert (cfg.batch_size, cfg.learning_rate, cfg.arch_learning_rate) == (32, 0.05, 6e-4)


def test_cpu_demo_preset_and_precedence():
    cfg = resolve_config(dict(BASE, preset="cpu-demo"))
    assert (cfg.portion, cfg.init_channels, cfg.layers, cfg.batch_size, cfg.epochs) == (0.02, 8, 5, 32, 3)
    assert cfg.strategy == "darts" and not get_strategy(cfg.strategy).unrolled  # first order
    pc = resolve_config(dict(BASE, preset="cpu-demo", strategy="pcdarts"))
    assert pc.batch_size == 32 and pc.arch_begin_epoch == 1  # the preset beats the strategy ...
    cfg = resolve_config(dict(BASE, preset="cpu-demo", epochs=1, layers=3))
    assert (cfg.epochs, cfg.layers) == (1, 3)  # ... and flags beat the preset


def test_command_line_keeps_only_given_flags():
    o = cli_overrides("--dataset", "svhn", "--out", "o", "--selection", "random", "--count", "100",
                      "--arch-betas", "0.9", "0.99", "--selection-option", "class_balanced=true", "--no-progress",
                      "--deterministic")
    assert o == {"dataset": "svhn", "out": "o", "selection": "random", "count": 100, "arch_betas": (0.9, 0.99),
                 "selection_options": {"class_balanced": True}, "progress": False, "deterministic": True}
    cfg = resolve_config(o)
    assert cfg.portion is None and cfg.count == 100  # --count replaces the default portion
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip


@pytest.mark.parametrize("change, message", [
    ({"dataset": "mnist"}, "unknown data set 'mnist'"),
    ({"strategy": "enas"}, "unknown search strategy 'enas'"),
    ({"portion": 0.1, "count": 10}, "not both"),
    ({"portion": 1.5}, "--portion: must be in (0, 1]"),
    ({"init_channels": 5}, "--init-channels: must be even"),
    ({"image_size": 64}, "--image-size: only ImageNet"),
    ({"backend": "cuda"}, "--backend: must be one of reference, fused"),
    ({"learning_rate_min": 1.0}, "--learning-rate-min"),
    ({"scorer_checkpoint": "c.th"}, "either --entropy-file or --scorer-checkpoint"),
])
def test_invalid_configurations_name_the_flag(change, message):
    with pytest.raises(SearchError) as e:
        resolve_config(dict(BASE, **change))
    assert message in str(e.value)


def test_entropy_needed_unless_random():
    with pytest.raises(SearchError, match=r"--selection p1 ranks examples by entropy: pass --entropy-file"):
        resolve_config({"dataset": "cifar10", "out": "o"})
    assert resolve_config({"dataset": "cifar10", "out": "o", "selection": "random"}).entropy_file is None


def test_strategy_registry_builds_the_right_networks():
    assert list_strategies() == ["darts", "darts2", "pcdarts"]
    assert [get_strategy(n).unrolled for n in list_strategies()] == [False, True, False]
    assert get_strategy("darts").network_class("cifar10") is Network
    assert get_strategy("darts2").network_class("svhn") is Network
    assert get_strategy("pcdarts").network_class("cifar100") is PCNetwork
    assert get_strategy("darts").network_class("imagenet") is NetworkImageNetSearch
    assert get_strategy("pcdarts").network_class("imagenet") is PCNetworkImageNetSearch
    model = get_strategy("pcdarts").build_model(dataset="cifar10", C=4, num_classes=10, layers=3, criterion=None,
                                                backend="reference")
    assert isinstance(model, PCNetwork) and len(model.arch_parameters()) == 4
    with pytest.raises(SearchError, match=r"--init-channels 6 .*PCNetwork cannot be built: .*k=4"):
        get_strategy("pcdarts").build_model(dataset="cifar10", C=6, num_classes=10, layers=3, criterion=None,
                                            backend="reference")


def test_default_backend_resolution(monkeypatch):
    """The CLI and the models share one rule: fused exactly when the compiled kernels are there."""
    from proxynas_fast import extension
    from proxynas_fast.darts import Network

    assert default_backend() == ("fused" if extension.has_cpu_kernels() else "reference")
    monkeypatch.setattr(extension, "has_cpu_kernels", lambda: False)
    assert default_backend() == "reference"
    assert Network(4, 10, 3, None).backend == "reference"
    monkeypatch.setattr(extension, "has_cpu_kernels", lambda: True)
    assert default_backend() == "fused"
    assert Network(4, 10, 3, None).backend == "fused"


def test_backend_names_are_the_models():
    """config.BACKENDS repeats the models' backend names (so that --help needs no torch): the same names."""
    from proxynas_fast.darts import BACKENDS as MODEL_BACKENDS
    from proxynas_fast.search.config import BACKENDS

    assert tuple(BACKENDS) == tuple(MODEL_BACKENDS)


@pytest.mark.parametrize("cuda_kernels", [False, True])
def test_default_backend_follows_the_run_device(monkeypatch, tmp_path, cuda_kernels):
    """Issue 16 item 6: a run on a GPU without the CUDA kernels gets the reference cells (the fused cell would
    run its pure-PyTorch stand-ins there); the pipeline asks with the device the run uses."""
    import torch

    from proxynas_fast import extension
    from proxynas_fast.search.distributed import DistContext
    from proxynas_fast.search.pipeline import _start_run

    monkeypatch.setattr(extension, "has_cpu_kernels", lambda: True)
    monkeypatch.setattr(extension, "has_cuda_kernels", lambda: cuda_kernels)
    fused_on_gpu = "fused" if cuda_kernels else "reference"
    assert default_backend(torch.device("cpu")) == "fused"
    assert default_backend(torch.device("cuda", 0)) == default_backend("cuda") == fused_on_gpu
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # _start_run sets it
    config = SearchConfig(dataset="cifar10", out=str(tmp_path / "run"), selection="random", device="cuda")
    gpu_run = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    assert _start_run(config, gpu_run) == fused_on_gpu
    config.backend = "fused"  # an explicit --backend wins
    assert _start_run(config, gpu_run) == "fused"


def test_cli_errors_before_reading_data(tmp_path, capsys):
    assert main(["--dataset", "imagenet21k", "--data-dir", str(tmp_path), "--selection", "random",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--dataset: unknown data set 'imagenet21k'; choose one of cifar10, cifar100, svhn, imagenet" \
        in capsys.readouterr().err
    missing = tmp_path / "no-such-folder"
    assert main(["--dataset", "cifar10", "--data-dir", str(missing), "--selection", "random",
                 "--out", str(tmp_path / "o")]) == 2
    assert f"--data-dir {missing} does not exist" in capsys.readouterr().err
    assert main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--entropy-file" in err and "--scorer-checkpoint" in err and "--selection random" in err
    assert not (tmp_path / "o").exists()  # nothing written by a failed start


def test_list_strategies(capsys):
    assert main(["--list-strategies"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("darts:") and "darts2:" in out and "pcdarts:" in out and "batch_size=256" in out


def test_resume_refuses_changed_options(tmp_path):
    from proxynas_fast.search.outputs import write_config
    from proxynas_fast.search.resume import check_out_dir

    out = tmp_path / "run"
    saved = resolve_config(dict(BASE, out=str(out), epochs=3))
    write_config(out, saved.to_dict())
    assert check_out_dir(saved) is None  # no checkpoint yet (a failed start-up): not a run to protect
    (out / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(SearchError, match="already holds a search .* pass --resume"):
        check_out_dir(saved)
    same = resolve_config(dict(BASE, out=str(out), epochs=3, resume=True, progress=False, device="cpu"))
    assert check_out_dir(same) == saved.to_dict()  # progress/device may change on resume
    longer = resolve_config(dict(BASE, out=str(out), epochs=5, resume=True))
    with pytest.raises(SearchError, match=r"--resume: the options differ .*epochs: saved 3 vs now 5"):
        check_out_dir(longer)
