"""`python -m proxynas_fast.train` owns its --out folder (issue 15): one run at a time, the output checked before
any work, stale temporaries swept, the previous checkpoint kept as a fallback, one line on Ctrl-C."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time

import pytest
import torch

from proxynas_fast.darts.genotypes import genotype_to_dict, get_genotype
from proxynas_fast.run_folder import hold_output, lock_path_for
from proxynas_fast.train import trainer
from proxynas_fast.train.__main__ import main
from proxynas_fast.train.trainer import CheckpointError, load_checkpoint, read_log
from cli_process import interrupt_when
from read_only import read_only_folder
from test_train_cli import CLI_TINY, _cli, _tiny_trainer


def test_a_held_out_folder_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    with hold_output(out, what="train"):
        assert main(CLI_TINY + ["--data-dir", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: --out {out} is in use by train (pid {os.getpid()} on ")


def test_existing_read_only_folder_is_refused_before_training(tmp_path, cifar10_jpeg_dir, capsys):
    with read_only_folder(tmp_path / "ro", populate=lambda p: (p / "notes.txt").write_text("x")) as ro:
        t0 = time.monotonic()
        assert main(CLI_TINY + ["--data-dir", str(cifar10_jpeg_dir), "--out", str(ro)]) == 2
        assert time.monotonic() - t0 < 60  # no data loaded, no epoch trained
    err = capsys.readouterr().err
    assert f"error: --out {ro}: the folder is not writable (" in err and "epoch 1" not in err


def test_an_existing_run_is_refused_without_resume_before_the_data_loads(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert main(CLI_TINY + ["--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path)]) == 2
    assert f"error: {tmp_path / 'checkpoint.pt'} exists: pass --resume" in capsys.readouterr().err


def test_the_existing_run_check_is_made_while_the_lock_is_held(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    seen = []

    def check_under_lock(out_dir, resume):
        lock = lock_path_for(out_dir, "folder")
        assert lock.is_file(), "checked before the lock was taken"
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(out_dir)
        raise FileExistsError(f"{out_dir}/checkpoint.pt exists: pass --resume to continue that run")

    monkeypatch.setattr(trainer, "check_train_output", check_under_lock)
    assert main(CLI_TINY + ["--data-dir", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    assert seen == [str(out)]
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {out}/checkpoint.pt exists")
    assert not out.exists()  # the folder made for the lock is removed again


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, single_thread):
    full = _tiny_trainer(tmp_path / "full")
    full.fit()
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _tiny_trainer(cut, fail_at=(2, 1)).fit()  # dies inside epoch 3
    assert load_checkpoint(cut / "checkpoint.pt")["epoch"] == 2
    assert load_checkpoint(cut / "checkpoint.prev.pt")["epoch"] == 1
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # a disk that lost the end of the file
    (cut / ".checkpoint.pt.k1ll3d.pt").write_bytes(data[:100])  # a kill mid-save leaves this behind
    resumed = _tiny_trainer(cut)
    resumed.fit(resume=True)
    assert resumed.start_epoch == 1  # from the previous checkpoint, not from epoch 0
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["epoch"] for r in read_log(cut / "log.jsonl")] == [1, 2, 3]
    assert not (cut / ".checkpoint.pt.k1ll3d.pt").exists()


def test_truncated_checkpoint_without_a_previous_one_is_a_clear_error(tmp_path, single_thread, capsys):
    _tiny_trainer(tmp_path, epochs=1).fit()
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: cannot read the checkpoint: the file is truncated "
                                              r"or corrupt \("):
        _tiny_trainer(tmp_path, epochs=1).fit(resume=True)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_ctrl_c_prints_one_line_with_what_was_saved_and_the_resume_command(tmp_path, cifar10_jpeg_dir):
    out = tmp_path / "run"
    argv = [a if a != "3" or CLI_TINY[i - 1] != "--epochs" else "50" for i, a in enumerate(CLI_TINY)]
    argv += ["--data-dir", str(cifar10_jpeg_dir), "--out", str(out)]
    proc = _cli(argv)
    err = interrupt_when(lambda: (out / "checkpoint.pt").exists(), proc, timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: the checkpoint after epoch ") and f"/50 is saved in {out}/checkpoint.pt" in last
    assert last.endswith("resume with: python -m proxynas_fast.train " + " ".join(argv) + " --resume")
    assert not (out / ".lock").exists() and not list(out.glob(".checkpoint.pt.*"))


def test_resume_compares_the_genotype_file_not_its_spelling(tmp_path, single_thread):
    arch = tmp_path / "search" / "genotype.json"
    arch.parent.mkdir()
    arch.write_text(json.dumps(genotype_to_dict(get_genotype("DARTS_V2"))))
    _tiny_trainer(tmp_path / "run", epochs=1, arch=str(arch)).fit()
    (tmp_path / "x").mkdir()
    # Spelled differently, then moved with a copy: the same genotype, so the run resumes (refused before).
    _tiny_trainer(tmp_path / "run", epochs=1, arch=f"{tmp_path}/x/../search/genotype.json").fit(resume=True)
    shutil.copytree(arch.parent, tmp_path / "moved")
    _tiny_trainer(tmp_path / "run", epochs=1, arch=str(tmp_path / "moved" / "genotype.json")).fit(resume=True)
    (tmp_path / "moved" / "genotype.json").write_text(json.dumps(genotype_to_dict(get_genotype("DARTS_V1"))))
    with pytest.raises(ValueError, match="cannot resume with different settings \\(arch: "):
        _tiny_trainer(tmp_path / "run", epochs=1, arch=str(tmp_path / "moved" / "genotype.json")).fit(resume=True)
