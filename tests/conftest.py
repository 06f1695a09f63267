"""Shared fixtures: the read-only data beside the project (../shared) and small helpers."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("PROXYNAS_SHARED", REPO_ROOT.parent / "shared"))


def pytest_configure(config):
    # 2-core machines: keep intra-op threads at the core count, no oversubscription.
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 2)))
    # Subprocesses started by tests (CLIs, torchrun ranks) run tiny configurations: one intra-op thread each.
    # With two, a busy machine stalls them in spin-waits (a 30 s search took over 300 s).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A suite started in the background by a shell without job control inherits SIGINT ignored, and so would every
    # CLI a test starts: CPython leaves an ignored SIGINT ignored, so the Ctrl-C tests' children would never see
    # a KeyboardInterrupt and run to the end. A handler here is reset to the default action at exec, so the
    # children start as from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"the shared data folder {SHARED_DIR} is missing (set PROXYNAS_SHARED)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def cifar10_jpeg_dir(shared_dir) -> Path:
    return shared_dir / "data" / "cifar10-jpeg"


@pytest.fixture(scope="session")
def imagenet_sample_dir(shared_dir) -> Path:
    return shared_dir / "data" / "imagenet-sample"


@pytest.fixture(scope="session")
def reference_entropy_dir(shared_dir) -> Path:
    return shared_dir / "reference" / "entropy"


@pytest.fixture(scope="session")
def checkpoints_dir(shared_dir) -> Path:
    return shared_dir / "reference" / "checkpoints"


@pytest.fixture
def single_thread():
    """One intra-op thread for tests of tiny tensors: a parallel region costs more than the work, and on a
    busy 2-core machine a second thread's spin-waits made small models 10-50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

