"""A full disk is one line that says so (issue 28): `error: <file>: no space left on device while writing it; the
previous <file> is kept`, exit 2, the previous checkpoint intact and no temporary left. torch.save's C++ writer
reports ENOSPC as a RuntimeError without the errno ("basic_ios::clear", "unexpected pos ..."); the free space left
tells it apart from other faults."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from proxynas_fast import atomic
from proxynas_fast.atomic import DiskFullError, atomic_torch_save, atomic_write_text
from proxynas_fast.cli_errors import run_cli
from proxynas_fast.safe_load import load_plain
from test_reliability_search import args as search_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")


def _failing_save(message):
    def save(obj, f):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise RuntimeError(message)

    return save


@pytest.mark.parametrize("message", ["basic_ios::clear: iostream error",
                                     "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534",
                                     "PytorchStreamWriter failed writing file data/0: file write failed"])
def test_a_torch_writer_failure_on_a_full_disk_is_a_disk_full_error(tmp_path, monkeypatch, message):
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1}, path)
    monkeypatch.setattr(torch, "save", _failing_save(message))
    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 4096)
    with pytest.raises(DiskFullError) as caught:
        atomic_torch_save({"epoch": 2}, path)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.strerror == f"{path}: no space left on device while writing it; the previous checkpoint.pt is kept"
    monkeypatch.undo()
    assert load_plain(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_a_torch_writer_failure_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _failing_save("basic_ios::clear: iostream error"))
    monkeypatch.setattr(atomic, "_free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError, match="basic_ios::clear") as caught:
        atomic_torch_save({"epoch": 2}, tmp_path / "checkpoint.pt")
    assert not isinstance(caught.value, DiskFullError)


def test_enospc_from_a_text_write_is_a_disk_full_error(tmp_path, monkeypatch):
    real_open = open

    def full_open(file, mode="r", *a, **kw):
        if "w" in mode and str(file).startswith(str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(DiskFullError, match="genotype.json: no space left on device while writing it; no partial"):
        atomic_write_text(tmp_path / "genotype.json", "{}")


def test_run_cli_reports_a_full_disk_in_one_line(capsys):
    def body():
        raise DiskFullError(errno.ENOSPC, "/x/checkpoint.pt: no space left on device while writing it; the "
                                          "previous checkpoint.pt is kept")

    assert run_cli(body) == 2
    assert capsys.readouterr().err == ("error: /x/checkpoint.pt: no space left on device while writing it; the "
                                       "previous checkpoint.pt is kept\n")

    def append():
        raise OSError(errno.ENOSPC, "No space left on device")

    assert run_cli(append) == 2
    assert capsys.readouterr().err == "error: no space left on device (No space left on device); free space and resume\n"


def _check_second_epoch_failed(proc, out):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"error: {out / 'checkpoint.pt'}: no space left on device while writing it; "
                    "the previous checkpoint.pt is kept"), proc.stderr[-3000:]
    assert load_plain(out / "checkpoint.pt")["epochs_done"] == 1
    assert not list(out.glob(".checkpoint.pt.*")) and not (out / ".lock").exists()


def test_search_cli_on_a_full_disk_injected(cifar10_jpeg_dir, tmp_path):
    """Runs everywhere (no mount needed): the second checkpoint write fails as torch's writer fails on a full
    disk, with the free space of a full disk."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys, torch
        from proxynas_fast import atomic
        from proxynas_fast.search.__main__ import main
        real_save, calls = torch.save, []
        def save(obj, f, *a, **kw):
            if '.checkpoint.pt.' in str(f):
                calls.append(f)
                if len(calls) == 2:
                    atomic._free_bytes = lambda folder: 0
                    raise RuntimeError('basic_ios::clear: iostream error')
            return real_save(obj, f, *a, **kw)
        torch.save = save
        sys.exit(main({[str(a) for a in search_args(cifar10_jpeg_dir, out, epochs=2)]!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=CHILD_ENV, capture_output=True, text=True,
                          timeout=600)
    _check_second_epoch_failed(proc, out)


def test_search_cli_on_a_real_full_disk(cifar10_jpeg_dir, tmp_path):
    """A 1600 KiB tmpfs holds the first epoch's files (a 1.1 MB checkpoint) but not the second checkpoint's
    temporary beside the first. Needs permission to mount (root); skipped otherwise."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "run"
        proc = subprocess.run([sys.executable, "-m", "proxynas_fast.search",
                               *search_args(cifar10_jpeg_dir, out, epochs=2)],
                              cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
        _check_second_epoch_failed(proc, out)
    finally:
        subprocess.run(["umount", str(disk)], check=True)
