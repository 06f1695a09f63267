"""The search owns its --out folder (issue 15): one run at a time, outputs checked before any work, resumes that
match the folder (not its spelling), proxy files that must be the checkpoint's, and one line on Ctrl-C."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from proxynas_fast.run_folder import hold_output
from proxynas_fast.search.__main__ import main
from proxynas_fast.search.resume import resume_differences
from cli_process import child_env, interrupt_when, wait_for
from read_only import read_only_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_ENV = child_env()


def args(data_dir, out, *extra, epochs=1):
    return ["--dataset", "cifar10", "--data-dir", str(data_dir), "--selection", "random", "--count", "64",
            "--batch-size", "16", "--epochs", str(epochs), "--layers", "2", "--init-channels", "4", "--seed", "3",
            "--device", "cpu", "--no-progress", "--no-download", "--log-every", "1", "--out", str(out), *extra]


def child(data_dir, out, *extra, epochs=1, **kw):
    return subprocess.Popen([sys.executable, "-m", "proxynas_fast.search", *args(data_dir, out, *extra, epochs=epochs)],
                            cwd=REPO, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_held_out_folder_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    with hold_output(out, what="search"):
        # The data folder does not exist: the refusal must come first.
        assert main(args(tmp_path / "no-data", out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --out {out} is in use by search (pid {os.getpid()} on ") and "\n" not in err
    assert not out.exists()  # nothing written; the hold removed the folder it created


@pytest.mark.slow  # a whole CLI run or long check: CI runs it with -m slow
def test_second_concurrent_search_is_refused_and_a_killed_holder_leaves_no_lock(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    # A first epoch of 256 steps (the later --count wins): the holder must still be in it, with no checkpoint
    # written, when it is killed (with 4 steps an epoch ended within the second's start-up once only the proxy's
    # JPEGs were decoded, and the folder then held a checkpoint).
    first = child(cifar10_jpeg_dir, out, "--count", "4096", epochs=50)
    try:
        wait_for(lambda: (out / "config.json").exists(), first)
        second = subprocess.run([sys.executable, "-m", "proxynas_fast.search", *args(cifar10_jpeg_dir, out)],
                                cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by search (pid {first.pid} on " in second.stderr and "Traceback" not in second.stderr
        assert not (out / "checkpoint.pt").exists()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # kill -9 left the lock file but not the lock; no checkpoint yet, so the same command simply starts over.
    assert main(args(cifar10_jpeg_dir, out)) == 0
    assert (out / "genotype.json").is_file() and not (out / ".lock").exists()
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events[-1] == "end"


def test_read_only_out_is_refused_before_any_work(tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as ro:
        assert main(args(tmp_path / "no-data", ro / "run")) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {ro / 'run'}: cannot write in {ro} (") and err.count("\n") == 1
        assert main(args(tmp_path / "no-data", ro)) == 2
        assert "the folder is not writable" in capsys.readouterr().err


def test_failed_start_up_does_not_protect_the_folder(cifar10_jpeg_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # What a start-up failure leaves (config written, no epoch done): the same command runs again.
    (out / "config.json").write_text(json.dumps({"dataset": "cifar10", "seed": 99}))
    (out / "log.jsonl").write_text(json.dumps({"event": "start", "config": {}}) + "\n")
    assert main(args(cifar10_jpeg_dir, out)) == 0, capsys.readouterr().err
    events = [json.loads(line)["event"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1
    # With a checkpoint it is a run: the same command finds it finished and redoes nothing (exit 0); other
    # options are refused without --resume.
    assert main(args(cifar10_jpeg_dir, out)) == 0
    assert "already holds this search, finished after 1 epochs" in capsys.readouterr().out
    assert main(args(cifar10_jpeg_dir, out, epochs=2)) == 2
    assert "already holds a search" in capsys.readouterr().err


def test_a_checkpoint_without_config_json_is_still_protected(tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"a finished run's weights")
    # The data folder does not exist: the refusal must come first, and touch nothing.
    assert main(args(tmp_path / "no-data", out)) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --out {out} already holds a search ({out / 'checkpoint.pt'}, its config.json is "
                   "missing); pass --resume to continue it or choose another --out\n")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    assert (out / "checkpoint.pt").read_bytes() == b"a finished run's weights"


def test_resume_follows_the_folder_not_its_spelling(cifar10_jpeg_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(cifar10_jpeg_dir, out)) == 0
    (tmp_path / "x").mkdir()
    # A finished run resumed: nothing left to train, its outputs refreshed; refused before as "out differs".
    assert main(args(cifar10_jpeg_dir, f"{tmp_path}/x/../run/", "--resume")) == 0, capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    assert main(args(cifar10_jpeg_dir, moved, "--resume")) == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (moved / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if r["event"] in ("start", "resume")] == ["start", "resume", "resume"]
    assert json.loads((moved / "config.json").read_text())["out"] == str(moved)


def test_resume_differences_compare_files_not_spellings(tmp_path, reference_entropy_dir):
    ent = reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"
    copy = tmp_path / "copy.txt"
    shutil.copy(ent, copy)
    saved = {"out": "runs/a", "entropy_file": str(ent), "seed": 1}
    assert resume_differences(saved, {"out": "/else/where", "entropy_file": str(copy), "seed": 1}, set()) == []
    assert resume_differences(saved, {"out": "runs/a", "entropy_file": f"{ent.parent}/../entropy/{ent.name}",
                                      "seed": 1}, set()) == []
    copy.write_text("0 0.1 3\n")
    assert resume_differences(saved, {"out": "runs/a", "entropy_file": str(copy), "seed": 2}, set()) == [
        "entropy_file", "seed"]


def test_resume_refuses_proxy_files_that_are_not_the_checkpoints(cifar10_jpeg_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(cifar10_jpeg_dir, out)) == 0
    weights = (out / "proxy_weights.txt").read_text().splitlines()
    arch = (out / "proxy_arch.txt").read_text().splitlines()
    w0, a0 = next(i for i, l in enumerate(weights) if l[:1].isdigit()), next(i for i, l in enumerate(arch) if l[:1].isdigit())
    weights[w0], arch[a0] = arch[a0], weights[w0]  # the same sizes, one example swapped between the halves
    (out / "proxy_weights.txt").write_text("\n".join(weights) + "\n")
    (out / "proxy_arch.txt").write_text("\n".join(arch) + "\n")
    capsys.readouterr()
    assert main(args(cifar10_jpeg_dir, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: the proxy files in {out} (") and "are not those" in err
    assert "checkpoint.pt" in err and err.count("\n") == 1


def test_ctrl_c_prints_one_line_with_what_was_saved_and_the_resume_command(cifar10_jpeg_dir, tmp_path):
    out = tmp_path / "run"
    proc = child(cifar10_jpeg_dir, out, epochs=50)
    err = interrupt_when(lambda: (out / "genotype.json").exists(), proc)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: the checkpoint after epoch ") and f"/50 is saved in {out}/checkpoint.pt" in last
    assert last.endswith(f"resume with: python -m proxynas_fast.search {' '.join(args(cifar10_jpeg_dir, out, epochs=50))} --resume")
    assert not (out / ".lock").exists() and not list(out.glob(".checkpoint.pt.*"))
