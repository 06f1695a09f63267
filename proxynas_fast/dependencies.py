"""Each CLI checks that the packages it will import are installed before it reads or writes anything.

Without the check a missing package surfaced as a traceback wherever it was first imported: `select` without
matplotlib wrote its proxy files and summary, then failed on the plot. `refuse_missing(tool)` looks the packages up
(`importlib.util.find_spec`: nothing is imported, so --help and early mistakes stay fast) and prints one line naming
every missing one and the pip command, exit status 2. numpy is imported before a CLI's main runs; the rest load
late, which is what this check covers.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Dict, List, Optional, Tuple

# Import name -> pip name, where they differ.
PIP_NAMES = {"PIL": "pillow"}
# What each CLI imports on its way, in `pyproject.toml`'s dependencies (scipy: SVHN's .mat files, PIL: image folders).
REQUIRED: Dict[str, Tuple[str, ...]] = {
    "select": ("matplotlib",),
    "score": ("torch", "tqdm", "PIL", "scipy"),
    "train_scorer": ("torch", "tqdm", "PIL", "scipy"),
    "search": ("torch", "tqdm", "PIL", "scipy", "matplotlib"),
    "train": ("torch", "tqdm", "PIL", "scipy"),
}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder refusing it, or a half-removed package without __spec__
        return False


def missing_packages(tool: str) -> List[str]:
    """The packages `tool` needs that cannot be found, by import name."""
    return [name for name in REQUIRED[tool] if not _installed(name)]


def refuse_missing(tool: str) -> Optional[int]:
    """None when everything `tool` needs is installed; else print the one-line error and return exit status 2."""
    missing = missing_packages(tool)
    if not missing:
        return None
    pip = " ".join(PIP_NAMES.get(name, name) for name in missing)
    verb = "is" if len(missing) == 1 else "are"
    print(f"error: python -m proxynas_fast.{tool} needs {', '.join(missing)}, which {verb} not installed for "
          f"{sys.executable}; install with: {sys.executable} -m pip install {pip}", file=sys.stderr, flush=True)
    return 2
