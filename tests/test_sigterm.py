"""SIGTERM is handled like Ctrl-C (issue 28): one `interrupted: SIGTERM; ...` line with what was saved and the
resume command, the same saved state, exit 143 (128 + 15)."""
from __future__ import annotations

import os
import signal

from proxynas_fast.cli_errors import EXIT_TERMINATED, run_cli
from proxynas_fast.safe_load import load_plain
from cli_process import interrupt_when
from test_reliability_search import args as search_args, child as search_child
from test_train_cli import CLI_TINY, _cli


def test_run_cli_turns_sigterm_into_one_line_and_restores_the_handler(capsys):
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def body():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        finally:
            cleaned.append(True)  # cleanup code runs, as after a Ctrl-C
        return 0

    assert run_cli(body, interrupted_message=lambda: "state saved; resume with: x") == EXIT_TERMINATED == 143
    assert capsys.readouterr().err == "interrupted: SIGTERM; state saved; resume with: x\n"
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) is before


def test_sigterm_to_a_running_search(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    proc = search_child(cifar10_jpeg_dir, out, epochs=50)
    err = interrupt_when(lambda: (out / "genotype.json").exists(), proc, sig=signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGTERM; the checkpoint after epoch ") and \
        f"/50 is saved in {out}/checkpoint.pt" in last
    assert last.endswith(f"resume with: python -m proxynas_fast.search "
                         f"{' '.join(search_args(cifar10_jpeg_dir, out, epochs=50))} --resume")
    assert not (out / ".lock").exists() and not list(out.glob(".checkpoint.pt.*"))
    assert load_plain(out / "checkpoint.pt")["epochs_done"] >= 1


def test_sigterm_to_a_running_train(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    argv = [a if a != "3" or CLI_TINY[i - 1] != "--epochs" else "50" for i, a in enumerate(CLI_TINY)]
    argv += ["--data-dir", str(cifar10_jpeg_dir), "--out", str(out)]
    proc = _cli(argv)
    err = interrupt_when(lambda: (out / "checkpoint.pt").exists(), proc, timeout=300, sig=signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGTERM; the checkpoint after epoch ") and \
        f"/50 is saved in {out}/checkpoint.pt" in last
    assert last.endswith("resume with: python -m proxynas_fast.train " + " ".join(argv) + " --resume")
    assert not (out / ".lock").exists() and not list(out.glob(".checkpoint.pt.*"))
    assert load_plain(out / "checkpoint.pt")["epoch"] >= 1
