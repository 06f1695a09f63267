"""CMakeLists.txt builds the same sources as setup.py, and the C++-level operator test passes under ctest."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_and_ctest(tmp_path):
    build = tmp_path / "build"
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    cfg = subprocess.run(["cmake", "-S", REPO, "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
                          f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                         capture_output=True, text=True, env=env)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    b = subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)],
                       capture_output=True, text=True, env=env)
    assert b.returncode == 0, b.stdout[-4000:] + b.stderr[-4000:]
    t = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True)
    assert t.returncode == 0, t.stdout[-3000:]
    assert "100% tests passed" in t.stdout
