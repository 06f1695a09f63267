"""Thread choice before torch loads (proxynas_fast.threads) and the CLIs that apply it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxynas_fast.threads import apply_threads, choose_threads, threads_for_load, usable_cores

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


NO_POLICY = {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}  # what apply_threads exports for the default policy


def _applied(choice):
    env = {}
    apply_threads(choice, environ=env)
    return env


def test_one_thread_keeps_the_runtime_default_wait_policy():
    """A single thread never waits at a barrier: nothing to choose, whatever the load."""
    for choice in (choose_threads(1, environ={}, cores=2, load=0.0),
                   choose_threads(None, environ={"OMP_NUM_THREADS": "1"}, cores=8, load=0.0),
                   choose_threads(None, environ={}, cores=2, load=7.5)):  # the load leaves one core
        assert choice.threads == 1 and choice.wait_policy == "default", choice
        assert "OpenMP wait policy default (one thread never waits at a barrier)" in choice.describe()
        assert set(_applied(choice)) == NO_POLICY


def test_threads_that_fit_the_free_cores_keep_the_runtime_default_wait_policy():
    """Passive waits cost 1.6-2.5x on a quiet machine: threads with a core each spin briefly, as the runtime does."""
    chosen = [choose_threads(None, environ={}, cores=2, load=0.1),  # from the load itself: always fits
              choose_threads(2, environ={}, cores=2, load=0.4),  # --threads 2, two free cores (0.4 rounds away)
              choose_threads(None, environ={"OMP_NUM_THREADS": "4"}, cores=8, load=3.2),  # 4 of 5 free cores
              choose_threads(None, environ={"LOCAL_WORLD_SIZE": "2"}, cores=8, load=1.0)]  # torchrun: 4 each
    assert [c.threads for c in chosen] == [2, 2, 4, 4]
    for choice in chosen:
        assert choice.wait_policy == "default", choice
        assert choice.describe().endswith("; OpenMP wait policy default (threads fit the free cores)"), choice
        assert set(_applied(choice)) == NO_POLICY


def test_more_threads_than_the_free_cores_wait_passively():
    """Forced past the free cores, a waiting thread sleeps rather than spin on a core another one needs."""
    cases = [(choose_threads(2, environ={}, cores=2, load=0.6), "passive (2 threads, 1 free core)"),
             (choose_threads(None, environ={"OMP_NUM_THREADS": "4"}, cores=2, load=0.0),
              "passive (4 threads, 2 free cores)"),
             (choose_threads(5, environ={"LOCAL_WORLD_SIZE": "2"}, cores=8, load=0.0),
              "passive (5 threads, 4 free cores per process)"),
             (choose_threads(None, environ={"OMP_NUM_THREADS": "3"}, cores=2, load=5.0),
              "passive (3 threads, 1 free core)")]
    for choice, described in cases:
        assert choice.wait_policy == "PASSIVE" and choice.describe().endswith(f"OpenMP wait policy {described}")
        env = _applied(choice)
        assert env == {"OMP_NUM_THREADS": str(choice.threads), "MKL_NUM_THREADS": str(choice.threads),
                       "OMP_WAIT_POLICY": "PASSIVE"}


def test_unknown_load_says_so_and_an_empty_policy_counts_as_unset():
    unknown = choose_threads(None, environ={}, cores=2, load=float("nan"))
    assert unknown.threads == 2 and unknown.wait_policy == "default"
    assert unknown.describe().endswith("OpenMP wait policy default (threads fit the cores; load unknown)")
    env = {"OMP_WAIT_POLICY": ""}  # exported but empty: the runtime reads it as unset, so do we
    forced = choose_threads(2, environ=env, cores=2, load=1.5)
    apply_threads(forced, environ=env)
    assert forced.wait_policy == "PASSIVE" and env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_users_wait_policy_is_kept():
    for requested, load in ((1, 0.0), (2, 0.0), (4, 1.5)):  # each branch of the rule above
        env = {"OMP_WAIT_POLICY": "active"}
        choice = choose_threads(requested, environ=env, cores=2, load=load)
        apply_threads(choice, environ=env)
        assert env["OMP_WAIT_POLICY"] == "active" and choice.wait_policy == "active"
        assert choice.describe().endswith("OpenMP wait policy active (OMP_WAIT_POLICY set by the user)")


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OMP_WAIT_POLICY")}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


@pytest.mark.parametrize("module", ["proxynas_fast.search", "proxynas_fast.train"])
@pytest.mark.parametrize("over_the_cores", [False, True])
def test_cli_threads_reach_torch(module, over_the_cores, tmp_path):
    """The CLI exports its choice before torch loads: torch's pool has the chosen size, and a fresh process sees no wait policy for one thread (the runtime's default) and PASSIVE for more
    threads than the machine's cores (more than any load leaves free)."""
    threads = usable_cores() + 1 if over_the_cores else 1
    probe = (f"import runpy, sys\n"
             f"sys.argv = ['{module}', '--threads', '{threads}', '--dataset', 'cifar10', '--arch', 'DARTS_V2', "
             f"'--data-dir', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'out')!r}, '--device', 'cpu']\n"
             f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"import os, torch\nprint('RESULT', torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], "
             f"os.environ.get('OMP_WAIT_POLICY'))\n")
    if module.endswith("search"):  # the search has no --arch
        probe = probe.replace("'--arch', 'DARTS_V2', ", "")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=_child_env(OMP_NUM_THREADS="2"),
                          capture_output=True, text=True, timeout=300)
    result = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, proc.stdout[-2000:] + proc.stderr[-2000:]
    pool, exported_threads, exported_policy = result[0]
    assert exported_threads == str(threads)
    if over_the_cores:  # the pool came out smaller than asked here (2 for 3 threads on the 2-core VM)
        assert min(2, usable_cores()) <= int(pool) <= threads and exported_policy == "PASSIVE", result
        described = "passive"
    else:
        assert (pool, exported_policy) == ("1", "None"), result
        described = "default"
    assert f"{threads} thread(s) (--threads); OpenMP wait policy {described} (" in proc.stdout + proc.stderr


@pytest.mark.parametrize("module", ["proxynas_fast.search", "proxynas_fast.train"])
def test_cli_refuses_zero_threads(module, tmp_path):
    proc = subprocess.run([sys.executable, "-m", module, "--threads", "0", "--dataset", "cifar10", "--out",
                           str(tmp_path / "o")] + (["--arch", "DARTS_V2"] if module.endswith("train") else []),
                          cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--threads: must be at least 1, got 0" in proc.stderr, proc.stderr[-2000:]
