"""Thread choice before torch loads (proxynas_fast.threads) and the CLIs that apply it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxynas_fast.threads import apply_threads, choose_threads, threads_for_load

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.4, 1), (2, 7.5, 1), (8, 3.2, 5), (2, None, 2),
    (4, float("nan"), 4), (1, 0.0, 1),
])
def test_threads_follow_the_free_cores(cores, load, expected):
    assert threads_for_load(cores, load) == expected


def test_torchrun_processes_share_the_free_cores():
    assert [threads_for_load(8, 0.0, 2), threads_for_load(8, 2.0, 2), threads_for_load(2, 0.0, 2),
            threads_for_load(2, 3.0, 4), threads_for_load(8, None, 2)] == [4, 3, 1, 1, 4]
    choice = choose_threads(None, environ={"LOCAL_WORLD_SIZE": "2"}, cores=8, load=1.0)
    assert choice.threads == 4 and choice.reason == "load 1.00 on 8 core(s), 2 processes"


def test_explicit_choices_win_in_order():
    env = {"OMP_NUM_THREADS": "3"}
    assert choose_threads(1, environ=env, cores=2, load=0.0).threads == 1  # --threads first
    choice = choose_threads(None, environ=env, cores=2, load=5.0)
    assert (choice.threads, choice.reason) == (3, "OMP_NUM_THREADS")  # then the user's export
    busy = choose_threads(None, environ={"OMP_NUM_THREADS": "zero"}, cores=2, load=1.7)
    assert busy.threads == 1 and busy.reason == "load 1.70 on 2 core(s)"  # unusable export: the load decides
    assert choose_threads(None, environ={}, cores=2, load=0.1).threads == 2
    with pytest.raises(ValueError, match="--threads"):
        choose_threads(0, environ={})


def test_wait_policy_is_passive_unless_the_user_chose():
    env = {}
    apply_threads(choose_threads(2, environ=env), environ=env)
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    choice = choose_threads(1, environ=env)
    apply_threads(choice, environ=env)
    assert env["OMP_WAIT_POLICY"] == "active" and "active" in choice.describe()


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OMP_WAIT_POLICY")}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


@pytest.mark.parametrize("module", ["proxynas_fast.search", "proxynas_fast.train"])
def test_cli_threads_reach_torch(module, tmp_path):
    """The CLI exports its choice before torch loads: torch's pool has the chosen size and waits passively."""
    probe = (f"import runpy, sys\n"
             f"sys.argv = ['{module}', '--threads', '1', '--dataset', 'cifar10', '--arch', 'DARTS_V2', "
             f"'--data-dir', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'out')!r}, '--device', 'cpu']\n"
             f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"import os, torch\nprint('RESULT', torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])\n")
    if module.endswith("search"):  # the search has no --arch
        probe = probe.replace("'--arch', 'DARTS_V2', ", "")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=_child_env(OMP_NUM_THREADS="2"),
                          capture_output=True, text=True, timeout=300)
    assert "RESULT 1 PASSIVE" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 thread(s) (--threads" in proc.stdout + proc.stderr


@pytest.mark.parametrize("module", ["proxynas_fast.search", "proxynas_fast.train"])
def test_cli_refuses_zero_threads(module, tmp_path):
    proc = subprocess.run([sys.executable, "-m", module, "--threads", "0", "--dataset", "cifar10", "--out",
                           str(tmp_path / "o")] + (["--arch", "DARTS_V2"] if module.endswith("train") else []),
                          cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--threads: must be at least 1, got 0" in proc.stderr, proc.stderr[-2000:]
