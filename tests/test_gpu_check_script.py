"""benchmarks/gpu_check.sh and its helpers, on this CPU: the dry run (every step at toy sizes, on a --prepare
output made from the real CIFAR-10 JPEGs), stopping at the first failed step, the time budget, and the pieces
that fix the GPU-only faults of issue 12 where a CPU can see them."""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from devices import require_kernels
from cli_process import child_env
from proxynas_fast.data.readers import decode_images
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.selection import select

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_bench  # noqa: E402
import gpu_cell_check  # noqa: E402


def _run_script(*args, timeout=900, **env_extra):
    env = child_env(PYTHON=sys.executable, **env_extra)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_dir):
    """`gpu_check.sh --prepare` at toy size: the first 64 examples of the P1 selection's order."""
    out = tmp_path_factory.mktemp("gpu-check-data")
    proc = _run_script("--prepare", SHARED=shared_dir, GPU_CHECK_DATA=out, PREPARE_COUNT=64, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_prepare_writes_the_p1_proxy_as_cifar_pickles(prepared, shared_dir):
    table = read_entropy_file(shared_dir / "reference/entropy/cifar10_resnet20_index_entropy_class.txt")
    table = table.sorted_by_index()
    positions = select("p1", table.entropy, count=64, labels=table.label, dataset="cifar10", seed=0)
    written = read_entropy_file(prepared / "entropy.txt")
    assert np.array_equal(written.index, np.arange(64))
    assert np.array_equal(written.entropy, table.entropy[positions])
    assert np.array_equal(written.label, table.label[positions])
    rows = []
    for b in range(1, 6):
        with open(prepared / "cifar-10-batches-py" / f"data_batch_{b}", "rb") as f:
            rows.append(pickle.load(f)["data"])
    images = np.concatenate(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    order = dict(line.split(maxsplit=1) for line in
                 (shared_dir / "data/cifar10-jpeg/train_order.txt").read_text().splitlines() if line.strip())
    first = int(table.index[positions[0]])
    path = shared_dir / "data/cifar10-jpeg" / order[str(first)].split()[0]
    assert np.array_equal(images[0], decode_images([str(path)], (32, 32))[0])


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_dry_run_runs_every_step(prepared, tmp_path):
    """What CI runs: every step of the GPU check on this CPU at toy sizes. (The budget is raised here so that a
    busy CI machine cannot make it flaky; the dry run's own default budget is 600 s.)"""
    out = tmp_path / "results"
    proc = _run_script("--dry-run", GPU_CHECK_DATA=prepared, OUT=out, GPU_CHECK_BUDGET=800)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else proc.stdout
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    for name in ("env", "build", "tests", "cell", "bench", "search", "graphs"):
        assert any(line.startswith(f"{name} ") and " ok " in line for line in summary.splitlines()), summary
    assert "RESULT: OK" in summary
    assert (out / "search_step.json").is_file() and (out / "search" / "genotype.json").is_file()

    # A second run into the same OUT starts a new search instead of refusing the first run's search folder
    # ("already holds a search; pass --resume"). Only the steps that write there, to keep it short.
    first = (out / "search" / "genotype.json").stat().st_mtime_ns
    proc = _run_script("--dry-run", GPU_CHECK_DATA=prepared, OUT=out, GPU_CHECK_BUDGET=800,
                       GPU_CHECK_STEPS="env search graphs")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + (out / "search.log").read_text()[-2000:]
    for name in ("env", "search", "graphs"):
        assert any(line.startswith(f"{name} ") and " ok " in line for line in summary.splitlines()), summary
    for name in ("build", "tests", "cell", "bench"):
        assert any(line.startswith(f"{name} ") and " skip " in line for line in summary.splitlines()), summary
    assert "RESULT: OK" in summary
    assert (out / "search" / "genotype.json").stat().st_mtime_ns != first


def test_a_failed_step_stops_the_run_with_a_summary(tmp_path):
    out = tmp_path / "results"
    proc = _run_script("--dry-run", GPU_CHECK_DATA=tmp_path / "not-prepared", OUT=out, timeout=300)
    assert proc.returncode == 1
    summary = (out / "summary.txt").read_text()
    assert "env      FAIL" in summary and "RESULT: FAILED at step 'env'" in summary
    assert "build" not in summary.split("RESULT")[0].split("env      FAIL")[1]  # nothing ran after it
    assert "--prepare" in (out / "env.log").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_mode_refuses_a_machine_without_cuda(prepared, tmp_path):
    proc = _run_script(GPU_CHECK_DATA=prepared, OUT=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "no CUDA device" in (tmp_path / "env.log").read_text()


def test_the_time_budget_ends_the_run(tmp_path):
    proc = _run_script("--dry-run", GPU_CHECK_DATA=tmp_path, OUT=tmp_path, GPU_CHECK_BUDGET=3, timeout=120)
    assert proc.returncode == 1
    assert "out of the 3s time budget" in (tmp_path / "summary.txt").read_text() or "timed out" in proc.stdout


def test_cell_check_compares_in_full_float32():
    """Fault 4 of issue 12: the fused-vs-reference check switches TF32 off for cuDNN and cuBLAS first."""
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
        torch.backends.cuda.matmul.allow_tf32 = True
        gpu_cell_check.full_float32()
        assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous[:2]
        torch.set_float32_matmul_precision(previous[2])


def test_gpu_bench_counts_the_graph_pool_in_peak_memory():
    """Fault 5 of issue 12: the CUDA-graph variant's peak memory includes the pool its capture allocates (read
    after the capture it was about 0). Needs a GPU."""
    require_kernels("cuda")
    device = torch.device("cuda")
    fused = gpu_bench.measure("cifar", "fused", 1, device, toy=True)
    graphed = gpu_bench.measure("cifar", "fused+graph", 1, device, toy=True)
    assert graphed["peak_bytes"] >= 0.5 * fused["peak_bytes"] > 0


def test_build_check_runs_the_gpu_runs_build_step_without_a_gpu(tmp_path):
    """`--build-check` checks the environment as the GPU run does, minus the device, and builds with the GPU run's
    own command (the 45-minute nvcc build itself is run by hand: docs/GPU.md); its build step must end with `_C`
    reporting CUDA kernels, not merely loading."""
    out = tmp_path / "results"
    proc = _run_script("--build-check", OUT=out, GPU_CHECK_STEPS="env", timeout=300)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    assert any(line.startswith("env ") and " ok " in line for line in summary.splitlines()), summary
    assert any(line.startswith("build ") and " skip " in line for line in summary.splitlines()), summary
    for name in ("tests", "cell", "bench", "search", "graphs"):  # the build check stops after the build
        assert not any(line.startswith(f"{name} ") for line in summary.splitlines()), summary
    script = SCRIPT.read_text()
    assert 'FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"' in script
    assert '"buildcheck": e.built_with_cuda()' in script
    assert 'CUDA_HOME="${CUDA_HOME:-$(dirname' not in script  # setup.py finds the toolkit (scripts/cuda_locator.py)
