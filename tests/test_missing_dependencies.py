"""A CLI started without a package it needs says so in one line and writes nothing (issue 31, item 13).

The packages are hidden from a child interpreter by a `sitecustomize` shim on its PYTHONPATH: a meta-path finder
that refuses them, as if they were not installed. Without the up-front check `select` wrote its proxy files and
summary, then died in a traceback when it imported matplotlib for the plot."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SHIM = '''
import os, sys

HIDDEN = set(os.environ.get("PROXYNAS_TEST_HIDE", "").split(","))


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
'''


def _run(tmp_path, hide, module, args):
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SHIM)
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{REPO}", PROXYNAS_TEST_HIDE=hide, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", f"proxynas_fast.{module}", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_shim_hides_the_package(tmp_path):
    done = _run(tmp_path, "matplotlib", "select", ["--list-methods"])  # needs no matplotlib
    assert done.returncode == 0 and "p1:" in done.stdout
    shim = tmp_path / "shim"
    check = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(shim), PROXYNAS_TEST_HIDE="matplotlib"))
    assert check.returncode == 1 and "No module named 'matplotlib'" in check.stderr


def test_select_without_matplotlib_says_so_and_writes_nothing(tmp_path, reference_entropy_dir):
    out = tmp_path / "proxy"
    done = _run(tmp_path, "matplotlib", "select", [
        "--entropy-file", str(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"),
        "--method", "p1", "--portion", "0.1", "--dataset", "cifar10", "--out", str(out)])
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        "error: python -m proxynas_fast.select needs matplotlib, which is not installed for ")
    assert done.stderr.rstrip().endswith("-m pip install matplotlib")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["shim"]


@pytest.mark.parametrize("module, args", [
    ("search", ["--dataset", "cifar10", "--selection", "random", "--out", "run"]),
    ("score", ["--dataset", "cifar10", "--checkpoint", "scorer.th", "--out", "entropy.txt"]),
    ("train", ["--dataset", "cifar10", "--arch", "DARTS_V2", "--out", "run"]),
    ("train_scorer", ["--dataset", "cifar10", "--out", "scorer.th"]),
])
def test_torch_clis_without_torch_say_so_and_write_nothing(tmp_path, module, args):
    done = _run(tmp_path, "torch,PIL", module, args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: python -m proxynas_fast.{module} needs torch, PIL, which are not "
                                  "installed for ")
    assert done.stderr.rstrip().endswith("-m pip install torch pillow")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shim"]


@pytest.mark.parametrize("stage, alias, hide, args", [
    ("scoring", "score", "torch,PIL", ["--dataset", "cifar10", "--checkpoint", "scorer.th", "--out", "entropy.txt"]),
    ("scoring.train_scorer", "train_scorer", "torch,PIL", ["--dataset", "cifar10", "--out", "scorer.th"]),
    ("selection", "select", "matplotlib", ["--entropy-file", "e.txt", "--count", "2", "--out", "proxy"]),
])
def test_stage_package_clis_check_dependencies_before_their_package_loads(tmp_path, stage, alias, hide, args):
    """`python -m proxynas_fast.<stage package>` runs the package's __init__ before the CLI: it must not need
    what the CLI checks for (the scoring package's networks load on first use), so the answer is the alias's one
    line."""
    done = _run(tmp_path, hide, stage, args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: python -m proxynas_fast.{alias} needs ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shim"]
