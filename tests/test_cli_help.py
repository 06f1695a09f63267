"""--help of select, score and train_scorer: every option explained with its default, and answered without
loading torch (which takes 15-20 s on a busy machine)."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from cli_process import child_env

REPO = Path(__file__).resolve().parents[1]
CLIS = ["proxynas_fast.select", "proxynas_fast.score", "proxynas_fast.train_scorer"]

PROBE = """
import sys
from {module} import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
print("TORCH LOADED" if "torch" in sys.modules else "NO TORCH")
"""


@pytest.mark.parametrize("module", CLIS)
def test_help_does_not_load_torch(module):
    run = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         cwd=REPO, env=child_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: python -m " + module in run.stdout
    assert run.stdout.rstrip().endswith("NO TORCH")


@pytest.mark.parametrize("module", CLIS)
def test_every_option_has_help_and_states_its_default(module):
    parser = importlib.import_module(module).build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{module} {action.option_strings}: no help text"
        if action.required:
            assert "required" in action.help, f"{module} {action.option_strings}: does not say it is required"
        elif "then exit" not in action.help and (action.default is not None or action.nargs == 0):
            assert "default" in action.help, f"{module} {action.option_strings}: does not state its default"
