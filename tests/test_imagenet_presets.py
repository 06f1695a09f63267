"""The ImageNet presets: the proxy-data paper's ImageNet search and PC-DARTS's, flags shrinking them, the data set
and strategy they are for, --help, and the hint when a batch does not fit a proxy half of the sample."""
from __future__ import annotations

import pytest

from proxynas_fast.darts import PCDARTS_IMAGENET_SEARCH
from proxynas_fast.search import SearchError, build_parser, resolve_config
from proxynas_fast.search.__main__ import main
from proxynas_fast.search.config import PRESETS

# The proxy-data paper's ImageNet search (train_search_proxy_data_imagenet.py defaults, script.sh's portion 0.1
# and P1 histogram sampling; docs/IMAGENET.md cites the lines).
PAPER_IMAGENET = dict(dataset="imagenet", strategy="darts", selection="p1", portion=0.1, weight_fraction=0.5,
                      batch_size=64, learning_rate=0.025, learning_rate_min=0.001, momentum=0.9, weight_decay=3e-4,
                      arch_learning_rate=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_begin_epoch=0,
                      grad_clip=5.0, epochs=50, init_channels=16, layers=8, image_size=224, validate_every=0)
# PC-DARTS's train_search_imagenet.py.
PCDARTS_IMAGENET = dict(dataset="imagenet", strategy="pcdarts", portion=0.125, weight_fraction=0.8, batch_size=1024,
                        learning_rate=0.5, learning_rate_min=0.0, momentum=0.9, weight_decay=3e-4,
                        arch_learning_rate=6e-3, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                        arch_begin_epoch=35, grad_clip=5.0, epochs=50, init_channels=16, layers=8, image_size=224,
                        validate_every=0)


def values(cfg, keys):
    return {k: getattr(cfg, k) for k in keys}


def test_imagenet_preset_is_the_papers_imagenet_search():
    cfg = resolve_config(dict(preset="imagenet", out="runs/x", entropy_file="e.txt"))
    assert values(cfg, PAPER_IMAGENET) == PAPER_IMAGENET


def test_pcdarts_imagenet_preset_is_pcdarts_own_imagenet_search():
    cfg = resolve_config(dict(preset="pcdarts-imagenet", out="runs/x", entropy_file="e.txt"))
    assert values(cfg, PCDARTS_IMAGENET) == PCDARTS_IMAGENET
    # ... and agrees with the PC-DARTS ImageNet hyperparameters the darts package records.
    for key in ("batch_size", "learning_rate", "learning_rate_min", "momentum", "weight_decay", "epochs",
                "init_channels", "layers", "grad_clip", "arch_learning_rate", "arch_weight_decay", "arch_begin_epoch"):
        assert getattr(cfg, key) == getattr(PCDARTS_IMAGENET_SEARCH, key), key
    assert cfg.weight_fraction == PCDARTS_IMAGENET_SEARCH.train_portion


@pytest.mark.parametrize("preset", ["imagenet", "pcdarts-imagenet"])
def test_flags_shrink_a_preset(preset):
    cfg = resolve_config(dict(preset=preset, dataset="imagenet", out="x", entropy_file="e.txt", batch_size=8,
                              layers=3, init_channels=4, epochs=2, image_size=64, validate_every=1,
                              arch_begin_epoch=1))
    assert values(cfg, ("batch_size", "layers", "init_channels", "epochs", "image_size", "validate_every",
                        "arch_begin_epoch")) == (dict(batch_size=8, layers=3, init_channels=4, epochs=2,
                                                      image_size=64, validate_every=1, arch_begin_epoch=1))
    assert cfg.preset == preset and cfg.dataset == "imagenet"


@pytest.mark.parametrize("change, message", [
    (dict(preset="imagenet", dataset="cifar10"),
     "--preset imagenet: holds the settings of dataset imagenet, not --dataset cifar10; drop --preset or --dataset"),
    (dict(preset="imagenet", strategy="pcdarts"),
     "--preset imagenet: holds the settings of strategy darts, not --strategy pcdarts; use --preset "
     "pcdarts-imagenet"),
    (dict(preset="pcdarts-imagenet", strategy="darts2"),
     "--preset pcdarts-imagenet: holds the settings of strategy pcdarts, not --strategy darts2; drop --preset or "
     "--strategy"),
    (dict(preset="imagenet", validate_every=-1), "--validate-every: must be >= 0, got -1"),
])
def test_a_preset_refuses_another_data_set_or_strategy(change, message):
    with pytest.raises(SearchError) as info:
        resolve_config(dict(dict(out="x", entropy_file="e.txt"), **change))
    assert str(info.value) == message


def test_help_lists_both_presets_and_their_values():
    text = "".join(build_parser().format_help().split())  # argparse wraps lines, also at hyphens
    for name in ("imagenet", "pcdarts-imagenet"):
        spec = PRESETS[name]
        flags = "".join(f"--{k.replace('_', '-')}" + ("".join(map(str, v)) if isinstance(v, tuple) else str(v))
                        for k, v in {**spec["fixed"], **spec["common"]}.items())
        assert f"{name}sets{flags}" in text, name
    assert "docs/IMAGENET.md" in text


def test_a_ten_percent_proxy_of_the_sample_names_the_batch_that_fits(imagenet_sample_dir, tmp_path, capsys):
    """The preset's batch (64) is larger than a half of a 10% proxy of the 1,000-image sample (50): one line
    naming the largest batch that fits; with it the configuration passes that check."""
    out = tmp_path / "run"
    argv = ["--preset", "imagenet", "--data-dir", str(imagenet_sample_dir), "--selection", "random",
            "--out", str(out), "--device", "cpu", "--no-progress", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --portion 0.1 selects 100 examples of imagenet (50 for "
                                                   "the weights, 50 for the architecture), but with --batch-size 64")
    assert err.rstrip().endswith("pass --batch-size 50 or less (--preset imagenet sets --batch-size 64 for the full "
                                 "imagenet training set), or raise --portion/--count")


def test_the_imagenet_preset_without_entropies_says_which_scorer_to_pass():
    with pytest.raises(SearchError) as info:
        resolve_config(dict(preset="imagenet", out="x"))
    message = str(info.value)
    assert message.startswith("--selection p1 ranks examples by entropy: pass --entropy-file FILE")
    assert "for imagenet pass torchvision's pretrained ResNet-50 weights file" in message
    assert "resnet50-11ad3fa6.pth" in message and "https://download.pytorch.org/models/" in message
