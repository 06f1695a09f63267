"""--help of the search and train CLIs: answered without loading torch, and saying what the presets set;
train --list-archs lists the registered genotypes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_process import child_env
from proxynas_fast.darts.genotypes import list_genotypes
from proxynas_fast.search.cli_args import build_parser
from proxynas_fast.search.config import PRESETS
from proxynas_fast.train.config import _CPU_DEMO, describe_preset

REPO = Path(__file__).resolve().parents[1]
ENV = child_env()


def _help_in_child(module: str) -> subprocess.CompletedProcess:
    probe = (f"import runpy, sys\nsys.argv = ['{module}', '--help']\n"
             f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit as e:\n"
             f"    code = e.code\n"
             f"print('TORCH LOADED' if 'torch' in sys.modules else 'NO TORCH', code)\n")
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("module", ["proxynas_fast.search", "proxynas_fast.train"])
def test_help_does_not_load_torch(module):
    proc = _help_in_child(module)
    assert proc.stdout.rstrip().endswith("NO TORCH 0"), proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "usage: python -m " + module in proc.stdout


def test_search_help_says_what_cpu_demo_sets():
    text = "".join(build_parser().format_help().split())  # argparse wraps lines, also at hyphens
    for key, value in PRESETS["cpu-demo"]["common"].items():
        assert f"--{key.replace('_', '-')}{value}" in text, key
    assert "with--strategypcdarts,also--arch-begin-epoch1" in text


def test_train_help_says_what_cpu_demo_sets():
    text = describe_preset("cpu-demo")
    for key in ("init_channels", "layers", "epochs", "train_limit", "test_limit", "lr"):
        assert f"--{key.replace('_', '-')} {_CPU_DEMO[key]}" in text, key
    assert "minutes" in text


def test_train_list_archs():
    proc = subprocess.run([sys.executable, "-m", "proxynas_fast.train", "--list-archs"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == list_genotypes() and "DARTS_V2" in proc.stdout


def test_train_without_arch_names_the_flag():
    proc = subprocess.run([sys.executable, "-m", "proxynas_fast.train", "--dataset", "cifar10"], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--arch is required" in proc.stderr and "--list-archs" in proc.stderr
