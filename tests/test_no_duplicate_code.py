"""Lint: no block of 6 or more repeated lines between the loaders or between the registries (issue 16).

Groups (pairs are looked for across and within the files of one group):
- loaders: every proxynas_fast/loaders/*.py;
- registries: proxynas_fast/registry.py, selection/registry.py, search/strategies.py, data/registry.py,
  data/datasets.py where it exists, darts/model_search.py (the backend registry) and any other module that
  builds a `Registry(`.

Lines are normalised before they are compared: stripped; blank lines, comment lines, import lines and lines of
lone brackets are dropped. Every window of 6 consecutive normalised lines is hashed; two equal windows are a
repeat, overlapping repeats are merged into one block, reported with file:line ranges. The detector is checked on
synthetic text, so it cannot silently pass.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "proxynas_fast"
WINDOW = 6
REGISTRY_FILES = ("registry.py", "selection/registry.py", "search/strategies.py", "data/registry.py",
                  "data/datasets.py", "darts/model_search.py")
LONE_BRACKETS = re.compile(r"^[()\[\]{},:;]+$")
IMPORT_LINE = re.compile(r"^(import\s|from\s+\S+\s+import\b)")


@dataclass(frozen=True)
class Repeat:
    first: str  # file:start-end (original line numbers)
    second: str
    lines: int  # normalised lines shared

    def describe(self) -> str:
        return f"{self.first} and {self.second}: {self.lines} repeated lines"


def normalised_lines(text: str) -> List[Tuple[int, str]]:
    """(original line number, normalised line) for every line that counts. An import statement is dropped
    with its continuation lines (a parenthesised name list, a trailing backslash)."""
    kept, in_import, depth = [], False, 0
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if in_import or IMPORT_LINE.match(line):
            depth += line.count("(") - line.count(")")
            in_import = depth > 0 or line.endswith("\\")
            continue
        if not line or line.startswith("#") or LONE_BRACKETS.match(line):
            continue
        kept.append((number, line))
    return kept


def _matching_windows(files: Dict[str, List[Tuple[int, str]]]):
    """(name_a, i, name_b, j) for each pair of equal windows (a window = its first normalised line's index);
    within one file the two windows must not overlap."""
    places: Dict[Tuple[str, ...], List[Tuple[str, int]]] = defaultdict(list)
    for name, lines in files.items():
        texts = [text for _, text in lines]
        for i in range(len(texts) - WINDOW + 1):
            places[tuple(texts[i:i + WINDOW])].append((name, i))
    for same in places.values():
        for k, (name_a, i) in enumerate(same):
            for name_b, j in same[k + 1:]:
                if name_a != name_b or j - i >= WINDOW:
                    yield name_a, i, name_b, j


def find_repeats(files: Dict[str, str]) -> List[Repeat]:
    """Blocks of WINDOW or more normalised lines that appear twice, across or within the given texts."""
    lines = {name: normalised_lines(text) for name, text in files.items()}
    matches = set(_matching_windows(lines))
    repeats = []
    for name_a, i, name_b, j in sorted(matches):
        if (name_a, i - 1, name_b, j - 1) in matches:
            continue  # inside a block already reported from its start
        length = WINDOW
        while (name_a, i + length - WINDOW + 1, name_b, j + length - WINDOW + 1) in matches:
            length += 1
        span_a = f"{name_a}:{lines[name_a][i][0]}-{lines[name_a][i + length - 1][0]}"
        span_b = f"{name_b}:{lines[name_b][j][0]}-{lines[name_b][j + length - 1][0]}"
        repeats.append(Repeat(span_a, span_b, length))
    return repeats


def read_group(paths: Sequence[Path]) -> Dict[str, str]:
    return {path.relative_to(REPO).as_posix(): path.read_text() for path in paths}


def loader_files() -> List[Path]:
    return sorted((PACKAGE / "loaders").glob("*.py"))


def registry_files() -> List[Path]:
    named = {PACKAGE / name for name in REGISTRY_FILES if (PACKAGE / name).is_file()}
    builders = {path for path in PACKAGE.rglob("*.py") if re.search(r"\bRegistry\(", path.read_text())}
    return sorted(named | builders)


# ---- the lint on the package ------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", ["loaders", "registries"])
def test_no_repeated_block(group):
    paths = loader_files() if group == "loaders" else registry_files()
    # the group must be what it says: an empty or one-file group would pass without looking
    assert len(paths) >= 4, f"{group}: only {[p.name for p in paths]} found"
    if group == "registries":
        assert PACKAGE / "registry.py" in paths and PACKAGE / "search" / "strategies.py" in paths
    repeats = find_repeats(read_group(paths))
    if repeats:
        pytest.fail(f"{len(repeats)} repeated block(s) of {WINDOW}+ lines among the {group}:\n"
                    + "\n".join(r.describe() for r in repeats), pytrace=False)


# ---- the detector on synthetic text ------------------------------------------------------------------------------

BLOCK = "\n".join(f"value_{k} = compute({k})" for k in range(7)) + "\n"


def test_detector_finds_a_block_across_files_with_line_numbers():
    first = "import os\n\ndef a():\n" + BLOCK + "    return 1\n"
    second = "# header\nfrom x import y\n\n\nclass B:\n    pass\n\n" + BLOCK
    repeats = find_repeats({"a.py": first, "b.py": second})
    assert repeats == [Repeat("a.py:4-10", "b.py:8-14", 7)]


def test_detector_drops_multi_line_imports_but_not_the_code_after_them():
    names = "".join(f"    NAME_{k},\n" for k in range(8))
    first = f"from pkg.base import (\n{names})\n" + BLOCK
    second = f"from pkg.base import (  # shared\n{names})\nimport a, \\\n    b\n" + BLOCK
    assert find_repeats({"a.py": f"from pkg.base import (\n{names})\n", "b.py": second.split("import a")[0]}) == []
    assert find_repeats({"a.py": first, "b.py": second}) == [Repeat("a.py:11-17", "b.py:13-19", 7)]


def test_detector_ignores_blanks_comments_imports_and_lone_brackets():
    spaced = "\n".join(f"    value_{k} = compute({k})  \n# note\nimport os\n)\n" for k in range(7))
    repeats = find_repeats({"a.py": BLOCK, "b.py": spaced})
    assert len(repeats) == 1 and repeats[0].lines == 7 and repeats[0].second == "b.py:1-31"


def test_detector_finds_a_block_repeated_within_one_file():
    text = BLOCK + "other()\n" + BLOCK
    assert find_repeats({"a.py": text}) == [Repeat("a.py:1-7", "a.py:9-15", 7)]


def test_detector_lets_five_lines_and_changed_lines_pass():
    five = "\n".join(BLOCK.splitlines()[:5]) + "\n"
    changed = BLOCK.replace("compute(3)", "compute(33)")
    assert find_repeats({"a.py": five, "b.py": five}) == []
    assert find_repeats({"a.py": BLOCK, "b.py": changed}) == []
    # eight equal lines hold no two separate blocks of six; twelve do
    assert find_repeats({"a.py": "pass\n" * 8}) == []
    assert find_repeats({"a.py": "pass\n" * 12}) == [Repeat("a.py:1-6", "a.py:7-12", 6)]
