"""--scorer-checkpoint instead of --entropy-file: the pipeline scores the training set with the paper's
ResNet-20 checkpoint, writes --out/entropy.txt, selects from it and searches. The data set is the first 2,000
real CIFAR-10 training images (scoring all 50,000 on two CPU cores would dominate the test budget)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from proxynas_fast.data import load_dataset
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.search import SearchError, resolve_config, run_search
from proxynas_fast.search import pipeline


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: one intra-op thread


@pytest.fixture(scope="module")
def first_2000(cifar10_jpeg_dir):
    return load_dataset("cifar10", cifar10_jpeg_dir, "train", download=False).subset(range(2000))


def test_scorer_checkpoint_scores_then_searches(first_2000, cifar10_jpeg_dir, checkpoints_dir,
                                                reference_entropy_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "load_train_set", lambda config: first_2000)
    out = tmp_path / "scored"
    config = resolve_config(dict(dataset="cifar10", data_dir=str(cifar10_jpeg_dir), out=str(out),
                                 scorer_checkpoint=str(checkpoints_dir / "cifar10_resnet20_authors.th"),
                                 selection="p1", count=64, epochs=1, batch_size=16, layers=3, init_channels=4,
                                 device="cpu", progress=False))
    result = run_search(config)

    scored = read_entropy_file(out / "entropy.txt")
    assert np.array_equal(scored.index, np.arange(2000))
    np.testing.assert_array_equal(scored.label, first_2000.labels)
    # The paper's list comes from the same network on the original (lossless) images. On the JPEG copies the
    # many near-zero entropies of memorised training images shuffle among themselves, so the rank correlation
    # is clearly positive (about 0.54 here) but far from 1; a randomly initialised scorer gives about 0.
    reference = read_entropy_file(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")
    rho = spearmanr(scored.entropy, reference.entropy[:2000]).correlation
    assert rho > 0.4, rho
    proxy = read_entropy_file(out / "proxy.txt")
    assert len(proxy) == 64 and np.array_equal(proxy.index, result.split.selected)
    np.testing.assert_array_equal(proxy.entropy, scored.entropy[proxy.index])
    assert (out / "genotype.json").is_file()

    # A second run in a fresh folder with a wrong checkpoint fails clearly.
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    config = resolve_config(dict(dataset="cifar10", data_dir=str(cifar10_jpeg_dir), out=str(tmp_path / "o2"),
                                 scorer_checkpoint=str(bad), selection="p1", count=64, device="cpu"))
    with pytest.raises(SearchError, match=r"--scorer-checkpoint: .*bad.th"):
        run_search(config)
