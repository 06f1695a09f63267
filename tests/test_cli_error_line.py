"""A CLI's `error:` / `interrupted:` line starts on a line of its own when a progress bar is still on screen (the
loop raised before it closed its bar), and the bar's last state stays visible above it."""
import io
import sys

import pytest

from proxynas_fast.cli_errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli
from proxynas_fast.progress import open_progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _raise_mid_epoch(error):
    def body():
        bar = open_progress(True, 40, "epoch 1/3")  # a real tqdm bar: stderr is a terminal
        assert type(bar).__name__ == "tqdm"
        bar.update(5)
        raise error  # out of the loop, the bar still open (as an error in a loader or a step does)
    return body


@pytest.mark.parametrize("error, status, prefix", [
    (ValueError("--data-dir data: no images"), EXIT_USER_ERROR, "error: "),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted: "),
])
def test_the_error_line_follows_an_open_bar_on_a_fresh_line(monkeypatch, error, status, prefix):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run_cli(_raise_mid_epoch(error), user_errors=(ValueError,)) == status
    text = terminal.getvalue()
    before, _, after = text.rpartition(prefix)
    assert before.endswith("\n"), repr(text)  # not on the bar's line
    assert "epoch 1/3" in before.splitlines()[-1] and "5/40" in before.splitlines()[-1]  # the bar's last state
    assert after.count("\n") == 1 and after.endswith("\n")  # the message: one line, the last one


def test_no_bar_no_extra_line(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    def body():
        raise ValueError("bad flag")

    assert run_cli(body, user_errors=(ValueError,)) == EXIT_USER_ERROR
    assert terminal.getvalue() == "error: bad flag\n"
