"""benchmarks/results_table.py: the results tables of docs/PERFORMANCE.md and README.md are what the JSON in
benchmarks/results give (so they cannot drift), and the rule that picks a figure's current runs."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import results_table  # noqa: E402

STEP = REPO / "benchmarks" / "results" / "cpu_search_step_2026-12-03_xeon_1005.json"
EPOCH = REPO / "benchmarks" / "results" / "cpu_search_epoch_2026-12-03_xeon.json"


def test_committed_tables_are_what_the_json_give():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "results_table.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    runs = results_table.all_runs()
    for path, render in results_table.TARGETS.items():
        text = path.read_text()
        assert results_table.replace_table(text, render(runs), str(path)) == text
        assert render(runs).count("\n") >= 4  # a header, its rule and the three figures


def _write(folder: Path, name: str, source: Path, *, when: str, code: str, threads=2, steps_cap=None, ratio=None):
    data = copy.deepcopy(json.loads(source.read_text()))
    data["datetime"], data["commit"] = when, {"code": code, "exact": True, "recorded_in": code}
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        if "threads" in extra:
            extra["threads"] = threads
        if "steps_cap" in extra:
            extra["steps_cap"] = steps_cap
        if ratio is not None and "speedup" in extra:
            extra["speedup"] = ratio
        if ratio is not None and "epoch_ratio" in extra:
            extra["epoch_ratio"] = ratio
    (folder / name).write_text(json.dumps(data))


def test_current_is_the_newest_code_in_the_standard_setting(tmp_path):
    _write(tmp_path, "a.json", STEP, when="2026-01-01T00:00", code="aaaaaaa", ratio=3.0)
    _write(tmp_path, "b.json", STEP, when="2026-01-02T00:00", code="bbbbbbb", ratio=4.0)
    _write(tmp_path, "c.json", STEP, when="2026-01-03T00:00", code="bbbbbbb", ratio=4.4)
    _write(tmp_path, "d.json", STEP, when="2026-01-04T00:00", code="ccccccc", threads=1, ratio=9.0)  # not standard
    _write(tmp_path, "e.json", EPOCH, when="2026-01-05T00:00", code="ccccccc", ratio=5.0)
    _write(tmp_path, "f.json", EPOCH, when="2026-01-06T00:00", code="ddddddd", steps_cap=2, ratio=2.0)  # capped
    runs = results_table.all_runs(tmp_path)
    now = results_table.current(runs, "step_cifar")
    assert [r.file for r in now] == ["b.json", "c.json"] and {r.code for r in now} == {"bbbbbbb"}
    assert [r.file for r in results_table.current(runs, "epoch")] == ["e.json"]
    table = results_table.performance_table(runs)
    assert "**4.00-4.40x** (2 runs, median 4.20x)" in table and "9.00x" not in table and "2.00x" not in table
    assert "**5.00x**" in table and "| bbbbbbb |" in table


def test_a_file_without_markers_is_refused():
    with pytest.raises(ValueError, match="needs one"):
        results_table.replace_table("# no table here\n", "| x |", "README.md")
