"""The README's commands as written: every pipeline command parses with its CLI's own parser, and the cheap one
(select, on the paper's CIFAR-10 entropy file in place of `entropy.txt`) runs verbatim and writes where
.gitignore covers it. The expensive ones (install, a search, training) are what CI and the lead run."""
import importlib
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
    "proxynas_fast.search": "proxynas_fast.search.config",
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
