"""`score` and `train_scorer` CLIs on ordinary mistakes and faults: arguments and outputs refused before any
work with one line and exit 2, a busy output refused naming its holder, Ctrl-C one line and exit 130."""
import os
import re

import pytest
import torch

from proxynas_fast import score, train_scorer
from proxynas_fast.run_folder import hold_output
from proxynas_fast.scoring import score_run, train_run
from proxynas_fast.scoring.scorer_training import ScorerRecipe
from proxynas_fast.scoring.scorer_training import train_scorer as train_scorer_api
from read_only import read_only_folder


@pytest.fixture
def no_work(monkeypatch):
    """Any scoring or training (or data loading) that starts fails the test."""
    def forbidden(*args, **kwargs):
        pytest.fail("work started before the arguments and outputs were checked")

    monkeypatch.setattr(score_run, "score_to_files", forbidden)
    monkeypatch.setattr(train_run, "load_dataset", forbidden)
    monkeypatch.setattr(train_run, "train_scorer", forbidden)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def score_args(checkpoints_dir, cifar10_jpeg_dir, out, *extra):
    return ["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--checkpoint",
            str(checkpoints_dir / "cifar10_resnet20_authors.th"), "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_score_batch_size_below_one(checkpoints_dir, cifar10_jpeg_dir, tmp_path, capsys, no_work, value):
    args = score_args(checkpoints_dir, cifar10_jpeg_dir, tmp_path / "e.txt", "--batch-size", value)
    assert score.main(args) == 2
    assert one_error_line(capsys) == f"error: --batch-size must be >= 1, got {value}"


def test_score_checkpoint_folder_and_missing_checkpoint(cifar10_jpeg_dir, tmp_path, capsys, no_work):
    for checkpoint, message in ((tmp_path, "is a folder; name the scorer's weights file (.th/.pt)"),
                                (tmp_path / "absent.th", "checkpoint does not exist")):
        assert score.main(["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--checkpoint",
                           str(checkpoint), "--out", str(tmp_path / "e.txt")]) == 2
        assert one_error_line(capsys) == f"error: --checkpoint {checkpoint}: {message}"


def test_score_out_naming_a_folder_or_read_only(checkpoints_dir, cifar10_jpeg_dir, tmp_path, capsys, no_work):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert score.main(score_args(checkpoints_dir, cifar10_jpeg_dir, folder)) == 2
    assert one_error_line(capsys) == f"error: --out {folder}: is a folder; name a file"
    with read_only_folder(tmp_path / "ro") as ro:
        assert score.main(score_args(checkpoints_dir, cifar10_jpeg_dir, ro / "e.txt")) == 2
        assert one_error_line(capsys).startswith(f"error: --out {ro / 'e.txt'}: cannot write in {ro}")


def test_score_outputs_colliding_with_the_checkpoint_or_each_other(checkpoints_dir, cifar10_jpeg_dir, tmp_path,
                                                                   capsys, no_work):
    weights = tmp_path / "scorer.th"
    weights.write_bytes((checkpoints_dir / "cifar10_resnet20_authors.th").read_bytes())
    base = ["--dataset", "cifar10", "--data-dir", str(cifar10_jpeg_dir), "--checkpoint", str(weights),
            "--no-progress"]
    out = tmp_path / "e.txt"
    for extra, message in (
            (["--out", str(weights)], f"--out {weights}: is the --checkpoint file"),
            (["--out", str(tmp_path / "sub" / ".." / "scorer.th")],
             f"--out {tmp_path / 'sub' / '..' / 'scorer.th'}: is the --checkpoint file"),
            (["--out", str(out), "--summary-out", str(weights)], f"--summary-out {weights}: is the --checkpoint file"),
            (["--out", str(out), "--features-out", str(weights)],
             f"--features-out {weights}: is the --checkpoint file"),
            (["--out", str(out), "--summary-out", str(out)], f"--summary-out {out}: is also the --out file"),
            (["--out", str(out), "--features-out", str(out)], f"--features-out {out}: is also the --out file"),
            (["--out", str(out), "--summary-out", str(tmp_path / "s.json"), "--features-out", str(tmp_path / "s.json")],
             f"--features-out {tmp_path / 's.json'}: is also the --summary-out file")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert score.main(base + extra) == 2, extra
        assert one_error_line(capsys) == f"error: {message}; name another output file"
    assert weights.read_bytes() == (checkpoints_dir / "cifar10_resnet20_authors.th").read_bytes()
    assert not out.exists()


def test_score_busy_output_and_ctrl_c(checkpoints_dir, cifar10_jpeg_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "e.txt"
    with hold_output(out, what="score", kind="file"):
        assert score.main(score_args(checkpoints_dir, cifar10_jpeg_dir, out)) == 2
    assert re.fullmatch(rf"error: --out {re.escape(str(out))} is in use by score \(pid {os.getpid()} .*",
                        one_error_line(capsys))

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(score_run, "score_to_files", interrupted)
    assert score.main(score_args(checkpoints_dir, cifar10_jpeg_dir, out)) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: nothing written")
    assert "resume with: python -m proxynas_fast.score --dataset cifar10" in err
    assert not out.exists() and not (tmp_path / ".e.txt.lock").exists()


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_train_scorer_refuses_no_epochs(tmp_path, capsys, no_work, epochs):
    assert train_scorer.main(["--dataset", "cifar10", "--out", str(tmp_path / "s.th"), "--epochs", epochs]) == 2
    assert one_error_line(capsys).startswith(f"error: --epochs must be >= 1, got {epochs}")
    assert not (tmp_path / "s.th").exists()


def test_train_scorer_api_refuses_no_epochs(tmp_path):
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_scorer_api(None, tmp_path / "s.th", ScorerRecipe(epochs=0), mean=(0, 0, 0), std=(1, 1, 1))
    assert not (tmp_path / "s.th").exists()


def test_train_scorer_out_folder_and_read_only(tmp_path, capsys, no_work):
    assert train_scorer.main(["--dataset", "cifar10", "--out", str(tmp_path), "--epochs", "1"]) == 2
    assert one_error_line(capsys) == f"error: --out {tmp_path}: is a folder; name a file"
    with read_only_folder(tmp_path / "ro") as ro:
        assert train_scorer.main(["--dataset", "cifar10", "--out", str(ro / "s.th"), "--epochs", "1"]) == 2
        assert one_error_line(capsys).startswith(f"error: --out {ro / 's.th'}: cannot write in {ro}")


@pytest.mark.parametrize("content", [b"\x80\x02garbage", b""])
def test_train_scorer_resume_with_a_corrupt_progress_file(tmp_path, capsys, no_work, content):
    (tmp_path / "s.th.progress").write_bytes(content)
    assert train_scorer.main(["--dataset", "cifar10", "--out", str(tmp_path / "s.th"), "--epochs", "2",
                              "--resume"]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {tmp_path / 's.th.progress'}: not a readable progress checkpoint")
    assert err.endswith("delete it to start over")
    torch.save({"epoch": 1}, tmp_path / "s.th.progress")  # readable, but not a progress checkpoint
    assert train_scorer.main(["--dataset", "cifar10", "--out", str(tmp_path / "s.th"), "--epochs", "2",
                              "--resume"]) == 2
    assert "not a scorer progress checkpoint (missing ['model'" in one_error_line(capsys)


def test_train_scorer_busy_output_and_ctrl_c(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.th"
    argv = ["--dataset", "cifar10", "--out", str(out), "--epochs", "2"]
    with hold_output(out, what="train_scorer", kind="file"):
        assert train_scorer.main(argv) == 2
    assert "is in use by train_scorer (pid" in one_error_line(capsys)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "train_scorer_to_file", interrupted, raising=False)
    monkeypatch.setattr(train_run, "load_dataset", interrupted)
    assert train_scorer.main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("interrupted: no epoch had finished, nothing saved; resume with: "
                          "python -m proxynas_fast.train_scorer --dataset cifar10")
    assert err.rstrip().endswith("--epochs 2 --resume")
