"""The README's commands as written: every pipeline command parses with its CLI's own parser, and the cheap one
(select, on the paper's CIFAR-10 entropy file in place of `entropy.txt`) runs verbatim and writes where
.gitignore covers it. The expensive ones (install, a search, training) are what CI and the lead run."""
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_process import child_env
from proxynas_fast.entropy_file import read_entropy_file

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PARSERS = {
    "proxynas_fast.train_scorer": "proxynas_fast.train_scorer",
    "proxynas_fast.score": "proxynas_fast.score",
    "proxynas_fast.select": "proxynas_fast.select",
    "proxynas_fast.search": "proxynas_fast.search.cli_args",
    "proxynas_fast.train": "proxynas_fast.train.__main__",
}


def pipeline_commands() -> dict:
    """step -> command, from the `| step | command | module |` table."""
    table = README.split("## Pipeline and commands", 1)[1].split("\n\n", 2)[1]
    commands = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        match = re.fullmatch(r"`(python -m \S+ .*)`", cells[1])
        if match:
            commands[cells[0]] = match.group(1)
    return commands


def quick_start_commands() -> list:
    block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    return [part.strip() for line in block.splitlines() for part in line.split("&&")]


def test_the_readme_opens_with_the_two_commands_ci_runs():
    """Two lines: install + the main job, install + the test suite; the second is what .ci/run runs."""
    lines = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("bash scripts/install.sh && ") for line in lines)
    assert lines[1] in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_table_can_be_pasted_and_says_what_takes_long():
    """The table's commands start with `python`: the README says once how to get the venv's python; the search and
    training lines say how long they take on a CPU."""
    assert "source .venv/bin/activate" in README.split("## Pipeline and commands", 1)[0]
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in row.strip("|").split("|")]
        for row in README.split("## Pipeline and commands", 1)[1].split("\n\n", 2)[1].splitlines()[2:])}
    for step in ("search", "train"):
        time_cell = rows[step][2]
        assert re.search(r"\d+ (hours?|minutes?)", time_cell) and "--preset cpu-demo" in time_cell, time_cell


def test_the_readme_lists_every_step():
    assert set(pipeline_commands()) == {"train a scorer (if none)", "score", "select", "search", "train"}


@pytest.mark.parametrize("step", ["train a scorer (if none)", "score", "select", "search", "train"])
def test_pipeline_command_parses(step):
    argv = shlex.split(pipeline_commands()[step])
    assert argv[:2] == ["python", "-m"]
    parser = importlib.import_module(PARSERS[argv[2]]).build_parser()
    parser.parse_args(argv[3:])  # exits (a test error) on an unknown or malformed flag


def test_quick_start_commands_exist_and_parse():
    commands = quick_start_commands()
    assert commands[0] == "bash scripts/install.sh" and (REPO / "scripts" / "install.sh").is_file()
    search = shlex.split(commands[1])
    assert search[:3] == [".venv/bin/python", "-m", "proxynas_fast.search"]
    importlib.import_module(PARSERS["proxynas_fast.search"]).build_parser().parse_args(search[3:])


def test_select_command_runs_as_written(reference_entropy_dir, tmp_path):
    shutil.copy(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt", tmp_path / "entropy.txt")
    argv = shlex.split(pipeline_commands()["select"])
    run = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    out = tmp_path / argv[argv.index("--out") + 1]
    assert len(read_entropy_file(out / "proxy.txt")) == 5000
    # where the command writes, relative to a checkout, is ignored by git
    relative = out.relative_to(tmp_path) / "proxy.txt"
    assert subprocess.run(["git", "check-ignore", "-q", str(relative)], cwd=REPO).returncode == 0


def test_quick_start_search_runs_twice(cifar10_jpeg_dir, reference_entropy_dir, tmp_path):
    """The README's main job pasted twice: the second run finds the finished search in --out, says where its
    result is and exits 0 without redoing it; the same command with other options still refuses the folder."""
    argv = shlex.split(quick_start_commands()[1])[1:]  # python -m proxynas_fast.search ...
    paths = {"--data-dir": str(cifar10_jpeg_dir), "--out": str(tmp_path / "cpu-demo"),
             "--entropy-file": str(reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt")}
    argv = [paths.get(before, a) for before, a in zip([None, *argv], argv)]
    tiny = ["--count", "64", "--batch-size", "16", "--layers", "3", "--init-channels", "4", "--epochs", "1",
            "--no-progress", "--threads", "1"]
    env = child_env()

    def search(*extra):
        return subprocess.run([sys.executable, *argv, *tiny, *extra], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)

    first = search()
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "cpu-demo"
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = search()
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"--out {out} already holds this search, finished after 1 epochs" in second.stdout
    assert "epoch 1/1" not in second.stdout and "genotype: " not in second.stdout  # nothing was run again
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == written  # nor written
    other = search("--seed", "3")
    assert other.returncode == 2 and "already holds a search" in other.stderr, other.stderr[-3000:]
