"""Output checks, output locks and the CLI ending (proxynas_fast.run_folder, proxynas_fast.cli_errors)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cli_process import child_env
from proxynas_fast.cli_errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, resume_command, run_cli
from proxynas_fast.run_folder import (
    OutputBusyError,
    OutputError,
    check_output_dir,
    check_output_file,
    hold_output,
    lock_path_for,
)
from read_only import read_only_folder


def test_check_output_dir_accepts_new_nested_folder_and_resolves(tmp_path):
    (tmp_path / "a").mkdir()
    got = check_output_dir(str(tmp_path / "a" / ".." / "runs" / "x") + "/")
    assert got == tmp_path / "runs" / "x"
    assert not got.exists()  # checks create nothing
    assert list(tmp_path.iterdir()) == [tmp_path / "a"]


def test_check_output_dir_refuses_a_file(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match=r"--out .*f\.txt: exists and is not a folder"):
        check_output_dir(f)
    with pytest.raises(OutputError, match=r"--proxy .*f\.txt/sub: .*f\.txt is a file, not a folder"):
        check_output_dir(f / "sub", flag="--proxy")


def test_an_empty_output_path_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=r"^--out: the path is empty; name a folder$"):
        check_output_dir("")
    with pytest.raises(OutputError, match=r"^--summary-out: the path is empty; name a file$"):
        check_output_file("", flag="--summary-out")
    assert os.listdir(tmp_path) == []


def test_check_output_dir_refuses_read_only(tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(OutputError, match=r"--out .*ro: the folder is not writable \(Read-only file system|"
                                              r"Permission denied\)"):
            check_output_dir(ro)
        with pytest.raises(OutputError, match=r"--out .*ro/new/deeper: cannot write in .*ro"):
            check_output_dir(ro / "new" / "deeper")


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "x" / "scorer.th") == tmp_path / "x" / "scorer.th"
    with pytest.raises(OutputError, match=r"--out .*: is a folder; name a file"):
        check_output_file(tmp_path)
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(OutputError, match=r"--out .*entropy\.txt: cannot write in .*ro"):
            check_output_file(ro / "entropy.txt")


def test_lock_paths(tmp_path):
    assert lock_path_for(tmp_path / "run") == tmp_path / "run" / ".lock"
    assert lock_path_for(tmp_path / "scorer.th") == tmp_path / ".scorer.th.lock"
    assert lock_path_for(str(tmp_path / "proxy.d") + "/") == tmp_path / "proxy.d" / ".lock"
    assert lock_path_for(tmp_path / "proxy.d", kind="folder") == tmp_path / "proxy.d" / ".lock"


def test_hold_output_refuses_a_second_holder_and_releases(tmp_path):
    out = tmp_path / "run"
    with hold_output(out, what="search") as p:
        assert p == out and out.is_dir()
        assert '"what": "search"' in (out / ".lock").read_text()
        with pytest.raises(OutputBusyError, match=rf"--out .*run/ is in use by search \(pid {os.getpid()} on "):
            with hold_output(str(out) + "/", what="search"):
                pass
    assert not out.exists()  # created by the hold and left empty: removed again
    (out / "keep").mkdir(parents=True)
    with hold_output(out, what="train", kind="folder"):
        with hold_output(tmp_path / "other", what="x"):  # other outputs are independent
            pass
    assert (out / "keep").is_dir() and not (out / ".lock").exists()


def test_hold_output_file_lock(tmp_path):
    out = tmp_path / "sub" / "entropy.txt"
    with hold_output(out, what="score"):
        assert (tmp_path / "sub" / ".entropy.txt.lock").exists()
        assert not out.exists()
        with pytest.raises(OutputBusyError, match="in use by score"):
            with hold_output(out, what="score"):
                pass


HOLDER = textwrap.dedent("""
    import sys, time
    from proxynas_fast.run_folder import hold_output
    with hold_output(sys.argv[1], what="search"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_lock_names_the_other_process_and_dies_with_it(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError) as e:
            with hold_output(out, what="search"):
                pass
        assert f"pid {proc.pid}" in str(e.value) and "time.sleep(60)" not in str(e.value)
        assert "command: python" in str(e.value) and str(out) in str(e.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert (out / ".lock").exists()  # the file stays after kill -9 ...
        with hold_output(out, what="search"):  # ... but it is no lock: the next run gets the folder
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_cli_user_error_is_one_line_exit_2(capsys):
    def body():
        raise OutputError("--out x: exists and is not a folder")

    assert run_cli(body) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: --out x: exists and is not a folder\n"

    class Mine(Exception):
        pass

    def body2():
        raise Mine("line one\nline two")

    assert run_cli(body2, user_errors=(Mine,)) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: line one line two\n"
    with pytest.raises(RuntimeError):  # anything else is a bug: it keeps its traceback
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("bug")), user_errors=(Mine,))


def test_run_cli_interrupt_is_one_line_exit_130(capsys):
    def body():
        raise KeyboardInterrupt

    status = run_cli(body, interrupted_message=lambda: "epoch 2 saved in runs/x; resume with: "
                     + resume_command("proxynas_fast.search", ["--out", "runs/x"]))
    assert status == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err == ("interrupted: epoch 2 saved in runs/x; resume with: "
                   "python -m proxynas_fast.search --out runs/x --resume\n")
    assert run_cli(lambda: None) == 0 and run_cli(lambda: 3) == 3


def test_run_cli_second_ctrl_c_while_the_message_is_built_is_still_one_line(capsys):
    def body():
        raise KeyboardInterrupt

    def message():
        raise KeyboardInterrupt  # the second Ctrl-C, e.g. while a checkpoint is read for the message

    assert run_cli(body, interrupted_message=message) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted: (interrupted again while looking at what was saved)\n"


INTERRUPTED_IN_STRING_CODE = textwrap.dedent("""
    import sys
    from proxynas_fast.cli_errors import run_cli

    def body():
        exec("raise KeyboardInterrupt", {})  # the Ctrl-C lands in code made from a string (a dataclass __init__)

    sys.exit(run_cli(body))
""")


def test_run_cli_interrupt_exits_130_under_python_m_wherever_it_landed(tmp_path):
    # Under `python -m`, CPython killed itself with SIGINT at exit (status -2) when the handled KeyboardInterrupt had
    # ended string-made code: the search's Ctrl-C test failed this way in a clean-clone CI run.
    (tmp_path / "interrupted_cli.py").write_text(INTERRUPTED_IN_STRING_CODE)
    env = child_env(tmp_path)
    for how in (["-m", "interrupted_cli"], [str(tmp_path / "interrupted_cli.py")]):
        done = subprocess.run([sys.executable, *how], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == EXIT_INTERRUPTED, (how, done.returncode, done.stderr[-2000:])
        assert done.stderr == "interrupted: nothing was saved\n"


def test_resume_command_quotes_and_does_not_repeat():
    assert resume_command("m", ["--out", "a b", "--resume"]) == "python -m m --out 'a b' --resume"
