"""scripts/install.sh skips what is installed and up to date and shows what it builds; the package configuration
ships proxynas_fast.darts.data (genotypes.json) without setuptools' BuildBackendWarning.

These run on a copy of the sources, never rebuilding the extension (PROXYNAS_CHECK_ONLY=1 reports instead of
building), so the shared .venv and its editable install are left alone."""
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _copy_sources(dest: Path) -> Path:
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("csrc", "scripts", "proxynas_fast"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _env(**extra):
    env = dict(os.environ, PROXYNAS_VENV=str(VENV), CUDA_HOME="/usr/local/cuda-13.0", PROXYNAS_SKIP_CUDA="1",
               PROXYNAS_SKIP_DALI="1", PROXYNAS_CHECK_ONLY="1",
               TORCH_SPEC=f"torch=={version('torch').split('+')[0]}")
    env.pop("FORCE_CUDA", None)
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    env.pop("TORCH_INDEX_URL", None)
    env.update(extra)
    return env


def _install(root: Path, env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/install.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
@pytest.mark.skipif(not list((REPO / "proxynas_fast").glob("_C*.so")), reason="the extension is not built here")
def test_second_install_skips_packages_and_build(tmp_path):
    root = _copy_sources(tmp_path)
    env = _env()
    stamp = subprocess.run([str(VENV / "bin" / "python"), "scripts/build_stamp.py", "."], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout
    (root / "build").mkdir()
    (root / "build" / "install-stamp").write_text(stamp)

    run = _install(root, env)
    assert run.returncode == 0, run.stderr
    assert "packages: already installed" in run.stdout
    assert "extension: up to date" in run.stdout and "would build" not in run.stdout
    assert "proxynas_fast installed: CPU kernels True" in run.stdout

    # A changed source, another torch build setting, or a forced rebuild each call for a build.
    kernel = next((root / "csrc" / "ops" / "cpu").glob("*.cpp"))
    original = kernel.read_text()
    kernel.write_text(original + "\n// changed\n")
    assert "extension: out of date (or not installed), would build" in _install(root, env).stdout
    kernel.write_text(original)
    assert "extension: up to date" in _install(root, env).stdout
    assert "would build" in _install(root, _env(PROXYNAS_SKIP_CUDA="", FORCE_CUDA="1")).stdout
    assert "would build" in _install(root, _env(PROXYNAS_REBUILD="1")).stdout

    # A torch other than the one asked for is not "already installed".
    other = _install(root, _env(TORCH_SPEC="torch==1.0.0"))
    assert "packages: would install torch==1.0.0" in other.stdout


def test_check_only_creates_nothing(tmp_path):
    """PROXYNAS_CHECK_ONLY=1 changes nothing: no virtual environment where there is none (it says what it would
    do), no build/ folder where there is none."""
    (tmp_path / "src").mkdir()
    root = _copy_sources(tmp_path / "src")
    run = _install(root, _env(PROXYNAS_VENV=str(tmp_path / "new-venv")))
    assert run.returncode == 0, run.stderr
    assert "missing, would create it, install torch==" in run.stdout and "would build" in run.stdout
    assert not (tmp_path / "new-venv").exists() and not (root / "build").exists()

    run = _install(root, _env())  # the existing venv, no stamp: the build is out of date
    assert run.returncode == 0, run.stderr
    assert "extension: out of date (or not installed), would build" in run.stdout
    assert not (root / "build").exists()


def test_another_build_of_the_wanted_torch_version_is_not_installed(tmp_path):
    """The installed torch's full version, local part included, is compared: asking for the CPU build (the
    README's CPU-only line: a CPU index URL) of the installed CUDA build's version replaces it, and the reverse;
    asking for the installed build itself skips."""
    root = _copy_sources(tmp_path)
    have = version("torch")
    base, _, local = have.partition("+")
    other = "cu130" if local.startswith("cpu") else "cpu"

    index = f"https://download.pytorch.org/whl/{other}/"
    run = _install(root, _env(TORCH_SPEC=f"torch=={base}", TORCH_INDEX_URL=index))
    assert run.returncode == 0, run.stderr
    assert f"packages: would replace torch {have}" in run.stdout
    assert f"packages: would install torch=={base}+{other} " in run.stdout
    run = _install(root, _env(TORCH_SPEC=f"torch=={base}+{other}"))
    assert f"packages: would install torch=={base}+{other} " in run.stdout
    assert f"packages: already installed (torch=={have} " in _install(root, _env(TORCH_SPEC=f"torch=={have}")).stdout


def test_build_progress_shows_one_line_per_compiled_file():
    ninja = "\n".join([
        "  running build_ext",
        "  [proxynas_fast] building _C with 12 sources; CUDA kernels: yes (8.0;9.0)",
        "  running egg_info",
        "  [proxynas_fast] building _C with 12 sources; CUDA kernels: yes (8.0;9.0)",  # pip's second setup.py run
        "  [1/13] c++ -MMD -MF /r/build/temp/csrc/ops/cpu/pool2d_kernel.o.d -pthread -O3 -I/r/csrc "
        "-c /r/csrc/ops/cpu/pool2d_kernel.cpp -o /r/build/temp/csrc/ops/cpu/pool2d_kernel.o -fopenmp",
        "  [2/13] /usr/local/cuda-13.0/bin/nvcc --generate-dependencies-with-compile -I/r/csrc "
        "-c /r/csrc/ops/cuda/mixed_node_kernel.cu -o /r/build/temp/csrc/ops/cuda/mixed_node_kernel.o -O3",
        "  [13/13] c++ -shared /r/build/temp/a.o -o /r/build/lib/proxynas_fast/_C.so",
        "  copying build/lib/proxynas_fast/_C.so -> proxynas_fast",
        "  /r/csrc/ops/cpu/x.cpp:3:1: error: expected ';' before '}' token",
    ])
    out = subprocess.run(["awk", "-f", str(REPO / "scripts" / "build_progress.awk")], input=ninja,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [
        "    [proxynas_fast] building _C with 12 sources; CUDA kernels: yes (8.0;9.0)",
        "  [1/13] compiling csrc/ops/cpu/pool2d_kernel.cpp (c++)",
        "  [2/13] compiling csrc/ops/cuda/mixed_node_kernel.cu (nvcc)",
        "  [13/13] linking",
        "    /r/csrc/ops/cpu/x.cpp:3:1: error: expected ';' before '}' token",
    ]


def test_packaging_ships_darts_data_without_warnings(tmp_path):
    """setuptools warned (BuildBackendWarning) that 'proxynas_fast.darts.data' is importable but absent from the
    packages configuration; build_py shows the same check without compiling the extension."""
    root = _copy_sources(tmp_path)
    for so in (root / "proxynas_fast").glob("_C*.so"):
        so.unlink()
    run = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path / "lib")], cwd=root,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    assert "absent from the `packages` configuration" not in output and "Warning:" not in output, output
    assert (tmp_path / "lib" / "proxynas_fast" / "darts" / "data" / "genotypes.json").is_file()


def _set_project(root: Path, old: str, new: str) -> None:
    text = (root / "pyproject.toml").read_text()
    assert old in text
    (root / "pyproject.toml").write_text(text.replace(old, new))


def test_dependencies_and_the_torch_version_come_from_pyproject(tmp_path):
    """pyproject.toml is the one list: a dependency added there, and the exact torch named in
    [tool.proxynas_fast], are what install.sh would install; install.sh names no package or version itself."""
    (tmp_path / "src").mkdir()
    root = _copy_sources(tmp_path / "src")
    env = _env(PROXYNAS_VENV=str(tmp_path / "new-venv"))
    env.pop("TORCH_SPEC")
    run = _install(root, env)
    assert run.returncode == 0, run.stderr
    assert "would create it, install torch==2.14.1 numpy scipy pillow tqdm matplotlib pytest pytest-benchmark " \
           "mpmath ninja (and DALI" in run.stdout, run.stdout
    _set_project(root, 'torch = "2.14.1"', 'torch = "2.99.0"')
    _set_project(root, '"tqdm", "matplotlib"]', '"tqdm", "matplotlib", "extra-dep>=1.2"]')
    out = _install(root, env).stdout
    assert "install torch==2.99.0 numpy scipy pillow tqdm matplotlib extra-dep>=1.2 pytest" in out, out
    script = (REPO / "scripts" / "install.sh").read_text()
    code = "\n".join(line.split(" # ")[0] for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"torch==\d|2\.14\.1", code), "install.sh names a torch version of its own"
    assert "DEPS=(" not in code and "matplotlib" not in code


def test_pyproject_names_the_oldest_tested_torch():
    text = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.11"' in text and "torch>=2.1\"" not in text


def test_cuda_kernels_only_with_a_visible_device_or_force_cuda(tmp_path):
    """No CUDA device here: the CPU kernels only, unless FORCE_CUDA=1 (CI, the GPU check); a found toolkit alone
    no longer builds CUDA kernels that cannot run."""
    root = _copy_sources(tmp_path)
    cpu = _install(root, _env(PROXYNAS_SKIP_CUDA=""))
    assert cpu.returncode == 0, cpu.stderr
    assert "would build CPU kernels only (no CUDA device visible" in cpu.stdout, cpu.stdout
    forced = _install(root, _env(PROXYNAS_SKIP_CUDA="", FORCE_CUDA="1")).stdout
    assert "would build CPU and CUDA kernels" in forced
    skipped = _install(root, _env(FORCE_CUDA="1")).stdout  # PROXYNAS_SKIP_CUDA=1 wins
    assert "would build CPU kernels only" in skipped


def test_build_stamp_changes_with_device_visibility(tmp_path, monkeypatch):
    """The stamp covers what decides the kernels built: FORCE_CUDA and whether torch sees a device."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("build_stamp", REPO / "scripts" / "build_stamp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = _copy_sources(tmp_path)
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    no_device = mod.build_stamp(root)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    device = mod.build_stamp(root)
    monkeypatch.setenv("FORCE_CUDA", "1")
    assert len({no_device, device, mod.build_stamp(root)}) == 3
