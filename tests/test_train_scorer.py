"""Training a scorer from scratch on real CIFAR-10 images: it learns, records forgetting, resumes exactly."""
import numpy as np
import pytest
import torch

from proxynas_fast import score
from proxynas_fast import train_scorer as train_scorer_cli
from proxynas_fast.data import dataset_info, load_dataset
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.scoring import load_scorer
from proxynas_fast.scoring.scorer_training import ScorerRecipe, evaluate, train_scorer


@pytest.fixture(scope="module")
def data(cifar10_jpeg_dir):
    train = load_dataset("cifar10", cifar10_jpeg_dir, "train").subset(range(1000))
    test = load_dataset("cifar10", cifar10_jpeg_dir, "test").subset(range(0, 10000, 20))
    return train, test


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_scorer_training_learns_and_resumes_exactly(data, tmp_path):
    train, test = data
    info = dataset_info("cifar10")
    recipe = ScorerRecipe(arch="resnet20", epochs=3, lr=0.05, batch_size=64, seed=3)
    kw = dict(mean=info.scorer_mean, std=info.scorer_std, log=lambda *_: None)
    full = train_scorer(train, tmp_path / "full.th", recipe, **kw)
    acc = evaluate(full, test, mean=info.scorer_mean, std=info.scorer_std)
    assert acc > 0.2, f"3 epochs on 1,000 images should beat chance (10%) clearly, got {acc:.3f}"

    train_scorer(train, tmp_path / "part.th", recipe, stop_after_epoch=1, **kw)
    assert (tmp_path / "part.th.progress").exists() and not (tmp_path / "part.th").exists()
    resumed = train_scorer(train, tmp_path / "part.th", recipe, resume=True, **kw)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after resume"

    # the output is a scorer checkpoint the scoring CLI reads, with forgetting counts per example
    loaded = load_scorer("resnet20", tmp_path / "full.th", 10)
    assert torch.equal(loaded.linear.weight, full.linear.weight)
    ck = torch.load(tmp_path / "full.th", weights_only=False)
    counts = np.asarray(ck["forgetting"])
    assert counts.shape == (1000,) and np.isfinite(counts).any()

    with pytest.raises(ValueError, match="different recipe"):
        train_scorer(train, tmp_path / "part.th", ScorerRecipe(epochs=4, batch_size=64, seed=3), resume=True, **kw)


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_cli_trains_a_scorer_that_the_score_cli_reads(cifar10_jpeg_dir, tmp_path, capsys):
    """The two CLIs end to end on the real images: train_scorer (1 epoch on 200 images, evaluated on the test
    split) writes a scorer and its progress file, no lock is left, and score reads the scorer."""
    out = tmp_path / "s.th"
    assert train_scorer_cli.main(["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--out", str(out),
                                  "--epochs", "1", "--limit", "200", "--batch-size", "50", "--device", "cpu"]) == 0
    assert "epoch 1/1: test acc" in capsys.readouterr().out
    assert out.is_file() and (tmp_path / "s.th.progress").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.th", "s.th.progress"]
    assert score.main(["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--checkpoint", str(out),
                       "--out", str(tmp_path / "e.txt"), "--limit", "100", "--device", "cpu", "--no-progress"]) == 0
    assert len(read_entropy_file(tmp_path / "e.txt")) == 100


def test_former_module_name_still_imports_with_a_warning():
    """`proxynas_fast.scoring.train` (the module's name before it became scorer_training) keeps its names."""
    import importlib
    import sys

    from proxynas_fast.scoring import scorer_training

    sys.modules.pop("proxynas_fast.scoring.train", None)
    with pytest.warns(DeprecationWarning, match="scorer_training"):
        old = importlib.import_module("proxynas_fast.scoring.train")
    for name in ("ScorerRecipe", "train_scorer", "evaluate", "load_progress", "progress_path_for", "check_recipe",
                 "PROGRESS_KEYS"):
        assert getattr(old, name) is getattr(scorer_training, name)
