"""The second-order and PC-DARTS strategies through the pipeline on real CIFAR-10 (tiny runs), the PC-DARTS
weight-only warm-up, the progress bar and the optional TensorBoard logging."""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from proxynas_fast.darts import Network, PCNetwork
from proxynas_fast.search import resolve_config, run_search
from proxynas_fast.search.outputs import read_log


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: one intra-op thread


def tiny(cifar10_jpeg_dir, out, **kw):
    base = dict(dataset="cifar10", data_dir=str(cifar10_jpeg_dir), out=str(out), selection="random", count=32,
                batch_size=8, layers=3, init_channels=4, epochs=1, device="cpu", progress=False, download=False)
    return resolve_config(dict(base, **kw))


def arch_adam_steps(out):
    state = torch.load(out / "checkpoint.pt", weights_only=False)["arch_optimizer"]["state"]
    return {int(s["step"]) for s in state.values()}


def test_second_order_darts_with_progress_bar_and_tensorboard(cifar10_jpeg_dir, tmp_path, capsys):
    out = tmp_path / "darts2"
    config = tiny(cifar10_jpeg_dir, out, strategy="darts2", progress=True, tensorboard=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_search(config)
    assert type(result.model) is Network and arch_adam_steps(out) == {2}  # 16 per half / 8 = 2 steps
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "2/2" in err  # progress on stderr (plain lines here: capsys is no terminal)
    if importlib.util.find_spec("tensorboard") is None:
        assert any("TensorBoard is not installed" in str(w.message) for w in caught)
    else:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_pcdarts_warm_up_trains_weights_only(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "pcdarts"
    config = tiny(cifar10_jpeg_dir, out, strategy="pcdarts", epochs=2, arch_begin_epoch=1)
    assert config.learning_rate == 0.1 and config.arch_learning_rate == 6e-4  # PC-DARTS defaults kept
    result = run_search(config)
    assert type(result.model) is PCNetwork
    epochs = [r for r in read_log(out / "log.jsonl") if r["event"] == "epoch"]
    assert [r["arch_updates"] for r in epochs] == [False, True]
    assert arch_adam_steps(out) == {2}  # only epoch 2's two steps touched alpha and beta
    assert set(epochs[0]["alphas"]) == {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"}
    assert epochs[0]["alphas"] != epochs[1]["alphas"]
