"""`python -m proxynas_fast.select` as a newcomer and a careless user meet it: the README command without
--dataset, bad rows for the named data set, unusable --out, a busy --out, Ctrl-C, --help without torch."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from proxynas_fast.selection import __main__ as select_cli  # the select CLI's code
from proxynas_fast.entropy_file import read_entropy_file
from proxynas_fast.run_folder import hold_output
from proxynas_fast.select import build_parser, main
from proxynas_fast.selection.__main__ import DEFAULT_OUT, SUMMARY_BIN_WIDTH
from read_only import read_only_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar10_file(reference_entropy_dir):
    return reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt"


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("".join(f"{i}\t{0.5 ** i}\t{i % 3}\n" for i in range(30)))
    return path


def test_readme_command_infers_the_data_set_from_a_whole_training_set(cifar10_file, tmp_path, capsys):
    """The README's select command has no --dataset: 50,000 rows with labels 0..9 are CIFAR-10's training set."""
    out = tmp_path / "proxy"
    assert main(["--entropy-file", str(cifar10_file), "--method", "p1", "--portion", "0.1", "--out", str(out)]) == 0
    assert "data set cifar10 (inferred)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bin_width"] == 0.5 and summary["config"]["dataset"] == "cifar10"
    assert summary["config"]["dataset_inferred"] is True
    assert len(read_entropy_file(out / "proxy.txt")) == 5000


@pytest.mark.parametrize("name,size,classes", [("cifar100", 50000, 100), ("svhn", 73257, 10)])
def test_inference_tells_the_data_sets_apart(reference_entropy_dir, tmp_path, capsys, name, size, classes):
    path = reference_entropy_dir / ("cifar100_resnet56_index_entropy_class.txt" if name == "cifar100"
                                    else "svhn_resnet20_index_entropy_class.txt")
    assert main(["--entropy-file", str(path), "--method", "random", "--count", "100", "--no-proxy-files",
                 "--out", str(tmp_path / "o")]) == 0
    assert f"data set {name} (inferred)" in capsys.readouterr().out


def test_method_without_bins_needs_no_data_set(small_file, tmp_path):
    out = tmp_path / "r"
    assert main(["--entropy-file", str(small_file), "--method", "random", "--count", "10", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bin_width"] == SUMMARY_BIN_WIDTH and summary["config"]["dataset"] is None


def test_unknown_method_is_reported_before_the_bin_width(small_file, tmp_path, capsys):
    assert main(["--entropy-file", str(small_file), "--method", "p7", "--portion", "0.5",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown selection method 'p7'" in err and "bin width" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("row,message", [
    ("50000\t0.1\t3", r"example index 50000 is outside 0..49999 \(cifar10 has 50000 training examples\)"),
    ("-1\t0.1\t3", r"example index -1 is outside 0..49999"),
    ("7\t0.1\t10", r"label 10 is outside 0..9 \(cifar10 has 10 classes\)"),
    ("7\t0.1\t2.7", r"label 2.7 is not a whole number"),
])
def test_rows_that_do_not_fit_the_data_set_are_refused_by_file_and_line(tmp_path, capsys, row, message):
    path = tmp_path / "scores.txt"
    lines = [f"{i}\t{0.01 * (i + 1)}\t{i % 10}" for i in range(5)]
    path.write_text("# a comment line\n" + "\n".join(lines[:3] + ["", row] + lines[3:]) + "\n")
    out = tmp_path / "o"
    assert main(["--entropy-file", str(path), "--dataset", "cifar10", "--count", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^error: {re.escape(str(path))}:6: {message}[^\n]*\n$", err), err
    assert not out.exists()


def test_out_naming_a_file_is_refused_before_work(cifar10_file, tmp_path, capsys, monkeypatch):
    target = tmp_path / "taken.txt"
    target.write_text("keep me\n")
    monkeypatch.setattr(select_cli, "read_entropy_file", lambda *a, **k: pytest.fail("read before --out was checked"))
    assert main(["--entropy-file", str(cifar10_file), "--count", "5", "--out", str(target)]) == 2
    assert capsys.readouterr().err == f"error: --out {target}: exists and is not a folder\n"
    assert target.read_text() == "keep me\n"


def test_count_above_the_examples_names_the_flag(small_file, tmp_path, capsys):
    assert main(["--entropy-file", str(small_file), "--count", "999999", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"error: --count must be in 1..30 (the number of examples in {small_file}), "
                                       "got 999999\n")
    assert not (tmp_path / "o").exists()


def test_empty_out_is_refused_before_work(small_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(select_cli, "read_entropy_file", lambda *a, **k: pytest.fail("read before --out was checked"))
    before = sorted(os.listdir(tmp_path))
    assert main(["--entropy-file", str(small_file), "--count", "5", "--out", ""]) == 2
    assert capsys.readouterr().err == "error: --out: the path is empty; name a folder\n"
    assert sorted(os.listdir(tmp_path)) == before


def test_entropy_file_naming_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "scores"
    folder.mkdir()
    assert main(["--entropy-file", str(folder), "--count", "5", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"error: entropy file {folder} is a folder; name a score file "
                                       "(index entropy label lines)\n")


def test_read_only_out_is_refused_before_work(cifar10_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(select_cli, "read_entropy_file", lambda *a, **k: pytest.fail("read before --out was checked"))
    with read_only_folder(tmp_path / "ro") as folder:
        for out in (folder, folder / "new"):
            assert main(["--entropy-file", str(cifar10_file), "--count", "5", "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: --out {out}: ") and err.count("\n") == 1, err


def test_a_second_run_on_a_held_folder_is_refused_naming_the_holder(small_file, tmp_path, capsys):
    out = tmp_path / "busy"
    with hold_output(out, what="search", kind="folder"):
        assert main(["--entropy-file", str(small_file), "--method", "random", "--count", "5",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is in use by search (pid {os.getpid()}" in err
    assert not (out / "proxy.txt").exists()


def test_ctrl_c_is_one_line_and_exit_130(small_file, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(select_cli, "write_proxy_files", interrupted)
    assert main(["--entropy-file", str(small_file), "--method", "random", "--count", "5",
                 "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: ") and err.count("\n") == 1 and "resume with: " in err


def test_default_output_is_ignored_by_git():
    assert build_parser().parse_args([]).out == DEFAULT_OUT
    check = subprocess.run(["git", "check-ignore", "-q", f"{DEFAULT_OUT}/proxy.txt"], cwd=REPO)
    assert check.returncode == 0, f"{DEFAULT_OUT} is not covered by .gitignore"


def test_every_option_has_help_and_defaults_are_stated():
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help"
        if action.default not in (None, False):
            assert "default" in action.help, f"{action.option_strings} does not state its default"
