"""Entropy scoring with the paper's scorer weights on the real CIFAR-10 images."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cli_process import child_env
from proxynas_fast.data import dataset_info, load_dataset
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.ops import softmax_entropy_f64
from proxynas_fast.scoring import (CheckpointError, load_scorer, read_state_dict, resnet20, resnet56,
                                   score_dataset)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cifar10(cifar10_jpeg_dir):
    return load_dataset("cifar10", cifar10_jpeg_dir, "train")


@pytest.mark.slow
def test_full_cifar10_scoring_matches_the_papers_list(cifar10, checkpoints_dir, reference_entropy_dir, tmp_path):
    """All 50,000 training images, original order, the authors' ResNet-20.

    JPEG re-encoding of the images lowers both figures against the paper's (PNG-exact) run; measured
    here: top-1 86.45% (the checkpoint reports 92.16% on the test set), Spearman 0.558 against the
    published list.
    Chance would be 10% and 0.
    """
    out = tmp_path / "entropy.txt"
    rc = subprocess.run([sys.executable, "-m", "proxynas_fast.score", "--dataset", "cifar10",
                         "--data-dir", str(cifar10.source).rsplit("/train", 1)[0],
                         "--checkpoint", str(checkpoints_dir / "cifar10_resnet20_authors.th"),
                         "--out", str(out), "--no-progress"], capture_output=True, text=True, cwd=REPO,
                        env=child_env(OMP_NUM_THREADS=torch.get_num_threads()))  # the big one
    assert rc.returncode == 0, rc.stderr
    ours = read_entropy_file(out)
    ref = read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")
    assert np.array_equal(ours.index, np.arange(50000)) and np.array_equal(ours.label, ref.label)
    rho = spearmanr(ours.entropy, ref.entropy).correlation
    import json

    summary = json.loads((tmp_path / "entropy.txt.json").read_text())
    print(f"\nCIFAR-10 train (JPEG) with cifar10_resnet20_authors.th: top-1 {100 * summary['top1']:.2f}%, "
          f"Spearman vs the paper's entropies {rho:.3f}")
    assert summary["top1"] > 0.83, summary["top1"]
    assert rho > 0.50, rho
    assert sum(summary["histogram"].values()) == 50000


def test_scores_equal_an_independent_float64_computation(cifar10, checkpoints_dir):
    info = dataset_info("cifar10")
    model = load_scorer("resnet20", checkpoints_dir / "cifar10_resnet20_authors.th", 10)
    sub = cifar10.subset(range(300))
    res = score_dataset(model, sub, mean=info.scorer_mean, std=info.scorer_std, batch_size=128,
                        with_features=True)
    # independent: a float64 copy of the network on manually normalised inputs
    m64 = load_scorer("resnet20", checkpoints_dir / "cifar10_resnet20_authors.th", 10).double().eval()
    x = torch.from_numpy(sub.images).permute(0, 3, 1, 2).double() / 255.0
    x = (x - torch.tensor(info.scorer_mean).double().view(1, 3, 1, 1)) / torch.tensor(info.scorer_std).double().view(1, 3, 1, 1)
    with torch.no_grad():
        logits = m64(x)
    ref = softmax_entropy_f64(logits).numpy()
    np.testing.assert_allclose(res.entropy, ref, rtol=2e-3, atol=1e-9)
    assert np.array_equal(res.predictions, logits.argmax(1).numpy())
    assert res.features.shape == (300, 64)
    assert res.top1 > 0.8


def test_checkpoint_variants_load(checkpoints_dir):
    # a 'module.'-prefixed checkpoint without BatchNorm step counters
    a = load_scorer("resnet20", checkpoints_dir / "cifar10_resnet20_idelbayev.th", 10)
    sd = read_state_dict(checkpoints_dir / "cifar10_resnet20_idelbayev.th")
    assert not any(k.startswith("module.") for k in sd)
    assert torch.equal(a.state_dict()["linear.weight"], sd["linear.weight"])
    m = load_scorer("resnet56", checkpoints_dir / "cifar100_resnet56_authors.th", 100)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in resnet56(100).parameters())
    load_scorer("resnet20", checkpoints_dir / "svhn_resnet20_authors.th", 10)
    assert sum(p.numel() for p in resnet20().parameters()) == 269_722  # the known ResNet-20 size


def test_bad_checkpoints_are_named(tmp_path, checkpoints_dir):
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.th"):
        load_scorer("resnet20", junk, 10)
    with pytest.raises(CheckpointError, match="cifar100_resnet56_authors.th.*does not fit resnet20"):
        load_scorer("resnet20", checkpoints_dir / "cifar100_resnet56_authors.th", 10)
    with pytest.raises(FileNotFoundError, match="missing.th"):
        load_scorer("resnet20", tmp_path / "missing.th", 10)
    torch.save({"epoch": 3}, tmp_path / "empty.th")
    with pytest.raises(CheckpointError, match="empty.th.*no state_dict"):
        load_scorer("resnet20", tmp_path / "empty.th", 10)


def test_cli_errors(tmp_path, checkpoints_dir):
    r = subprocess.run([sys.executable, "-m", "proxynas_fast.score", "--dataset", "cifar10", "--data-dir",
                        str(tmp_path / "absent"), "--checkpoint", str(checkpoints_dir / "cifar10_resnet20_authors.th"),
                        "--out", str(tmp_path / "e.txt")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "absent" in r.stderr and "does not exist" in r.stderr


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_two_process_scoring_equals_one(tmp_path, cifar10_jpeg_dir, checkpoints_dir):
    """torchrun with 2 CPU processes (gloo): shards gathered in index order equal the single-process file."""
    common = ["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--checkpoint",
              str(checkpoints_dir / "cifar10_resnet20_authors.th"), "--limit", "301", "--batch-size", "64",
              "--no-progress", "--device", "cpu"]
    env = child_env()
    one = subprocess.run([sys.executable, "-m", "proxynas_fast.score", *common, "--out", str(tmp_path / "one.txt")],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "proxynas_fast.score", *common, "--out", str(tmp_path / "two.txt"),
                          "--features-out", str(tmp_path / "f.npy")],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_entropy_file(tmp_path / "one.txt"), read_entropy_file(tmp_path / "two.txt")
    assert np.array_equal(a.index, b.index) and np.array_equal(a.label, b.label)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=1e-5, atol=1e-12)
    assert np.load(tmp_path / "f.npy").shape == (301, 64)
