"""No tool writes where another tool or run owns the files (issue 28, item 1).

The three instances found: `score --out` into a live search's folder replaced its log.jsonl; `select --out` into a
finished search rewrote its proxy files (its --resume then failed); a search into a `select` folder replaced the
proxy, leaving summary.json describing another selection. Then the general property, for every pair of tools: a
tool started on another tool's output (a folder tool on the folder, a file tool on a file in it or on the file)
exits 2 with one line naming the owner, and the owner's files are unchanged. The CLIs run for real, in this
process; each refusal comes before any data is read, so none of them trains or scores anything.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from proxynas_fast.output_owner import OWNER_FILE, folder_owner
from proxynas_fast.run_folder import hold_output

TOOLS = ("search", "select", "train", "score", "train_scorer")


@pytest.fixture(scope="module")
def scores(reference_entropy_dir, tmp_path_factory):
    """The first 1,000 rows of the paper's CIFAR-10 list: a real score file, fast to select from."""
    path = tmp_path_factory.mktemp("in") / "scores.txt"
    lines = (reference_entropy_dir / "cifar10_resnet20_index_entropy_class.txt").read_text().splitlines()
    path.write_text("\n".join(lines[:1000]) + "\n")
    return path


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "given_scorer.th"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def run_tool(tool: str, out: Path, scores: Path, scorer: Path, capsys) -> tuple:
    """(exit status, stderr) of `tool` writing to `out`, with arguments it accepts otherwise."""
    capsys.readouterr()
    if tool == "select":
        from proxynas_fast.select import main
        rc = main(["--entropy-file", str(scores), "--method", "random", "--count", "100", "--out", str(out)])
    elif tool == "search":
        from proxynas_fast.search.__main__ import main
        rc = main(["--dataset", "cifar10", "--selection", "random", "--count", "64", "--out", str(out),
                   "--device", "cpu", "--no-progress"])
    elif tool == "train":
        from proxynas_fast.train.__main__ import main
        rc = main(["--arch", "DARTS_V2", "--dataset", "cifar10", "--out", str(out), "--device", "cpu"])
    elif tool == "score":
        from proxynas_fast.score import main
        rc = main(["--dataset", "cifar10", "--checkpoint", str(scorer), "--out", str(out)])
    else:
        from proxynas_fast.train_scorer import main
        rc = main(["--dataset", "cifar10", "--out", str(out)])
    return rc, capsys.readouterr().err


def make_owned(tool: str, where: Path, scores: Path, capsys) -> Path:
    """An output of `tool` at `where`: its folder (folder tools) or its file (file tools), as the tool leaves it."""
    if tool == "select":
        from proxynas_fast.select import main
        assert main(["--entropy-file", str(scores), "--method", "p1", "--count", "200", "--bin-width", "0.5",
                     "--out", str(where)]) == 0
        capsys.readouterr()
        return where
    if tool in ("search", "train"):
        with hold_output(where, what=tool, kind="folder"):  # what the tool does first: lock and stamp
            names = (["config.json", "log.jsonl", "checkpoint.pt", "genotype.json", "proxy.txt"] if tool == "search"
                     else ["log.jsonl", "checkpoint.pt", "results.json"])
            for name in names:
                (where / name).write_text(f"{tool}'s {name}\n")
        return where
    if tool == "score":
        where.write_text(scores.read_text())
        return where
    torch.save({"state_dict": {"w": torch.ones(3)}}, where)
    return where


def snapshot(path: Path) -> dict:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _names_owner(err: str, owner: str) -> None:
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("threads: "))  # train's
    assert err.startswith("error: ") and err.count("\n") == 1, err
    if owner in ("search", "select", "train"):
        assert f"made by `python -m proxynas_fast.{owner}`" in err, err


# ---------------------------------------------------------------------------------------- the found instances
def test_score_into_a_live_search_folder_leaves_its_log(tmp_path, scores, scorer, capsys):
    run = tmp_path / "search_run"
    with hold_output(run, what="search", kind="folder"):  # the search is live: it holds its folder
        (run / "log.jsonl").write_text('{"event": "start"}\n')
        rc, err = run_tool("score", run / "log.jsonl", scores, scorer, capsys)
        assert rc == 2 and (run / "log.jsonl").read_text() == '{"event": "start"}\n'
    assert err.startswith(f"error: --out {run / 'log.jsonl'}: is inside {run} holds a search run")
    assert not list(run.glob(".log.jsonl*"))  # not even a lock file was made in the run's folder


def test_select_into_a_finished_search_keeps_its_proxy(tmp_path, scores, scorer, capsys):
    run = make_owned("search", tmp_path / "search_run", scores, capsys)
    before = snapshot(run)
    rc, err = run_tool("select", run, scores, scorer, capsys)
    assert rc == 2 and snapshot(run) == before
    assert err.startswith(f"error: --out {run}: {run} holds a search run (made by `python -m proxynas_fast.search`")
    assert err.rstrip().endswith("select writes only into a folder of its own (new, empty, or from an earlier "
                                 "select): choose another --out")


def test_select_into_a_search_folder_from_before_the_stamp(tmp_path, scores, scorer, capsys):
    run = make_owned("search", tmp_path / "search_run", scores, capsys)
    (run / OWNER_FILE).unlink()  # a folder written before the stamp: its files tell the owner
    assert folder_owner(run) == "search"
    before = snapshot(run)
    rc, err = run_tool("select", run, scores, scorer, capsys)
    assert rc == 2 and snapshot(run) == before and f"{run} holds a search run" in err


def test_search_into_a_select_folder_keeps_the_selection(tmp_path, scores, scorer, capsys):
    proxy = make_owned("select", tmp_path / "proxy", scores, capsys)
    before = snapshot(proxy)
    rc, err = run_tool("search", proxy, scores, scorer, capsys)
    assert rc == 2 and snapshot(proxy) == before
    assert err.startswith(f"error: --out {proxy}: {proxy} holds a proxy selection (made by `python -m "
                          "proxynas_fast.select`")


# ------------------------------------------------------------------------------------- every pair of tools
def _target(writer: str, owned: Path, owner: str) -> Path:
    """Where `writer` is pointed: a folder tool at the output itself; a file tool at a file in the owner's
    folder, or at the owner's file."""
    if writer in ("score", "train_scorer") and owned.is_dir():
        return owned / ("log.jsonl" if owner != "select" else "proxy.txt")
    return owned


@pytest.mark.parametrize("owner", TOOLS)
@pytest.mark.parametrize("writer", TOOLS)
def test_no_tool_writes_into_another_tools_output(tmp_path, scores, scorer, capsys, writer, owner):
    if writer == owner:
        pytest.skip("the same tool: its own rules (resume, replace) decide; see test_same_tool_*")
    owned = make_owned(owner, tmp_path / ("out" if owner in ("search", "select", "train") else "out.txt"), scores,
                       capsys)
    before = snapshot(owned)
    rc, err = run_tool(writer, _target(writer, owned, owner), scores, scorer, capsys)
    assert rc == 2, err
    assert snapshot(owned) == before
    _names_owner(err, owner)


@pytest.mark.parametrize("owner", ["search", "select", "train"])
@pytest.mark.parametrize("writer", ["search", "select", "train"])
def test_no_folder_tool_writes_inside_another_run_folder(tmp_path, scores, scorer, capsys, writer, owner):
    owned = make_owned(owner, tmp_path / "out", scores, capsys)
    before = snapshot(owned)
    rc, err = run_tool(writer, owned / "inner", scores, scorer, capsys)
    assert rc == 2 and snapshot(owned) == before and not (owned / "inner").exists()
    assert f"is inside {owned} holds" in err and "whose files belong to that run" in err


def test_same_tool_select_replaces_its_whole_selection(tmp_path, scores, scorer, capsys):
    from proxynas_fast.select import main

    proxy = make_owned("select", tmp_path / "proxy", scores, capsys)
    run_id = json.loads((proxy / OWNER_FILE).read_text())["run"]
    assert main(["--entropy-file", str(scores), "--method", "random", "--count", "100", "--no-proxy-files",
                 "--out", str(proxy)]) == 0
    # The earlier selection's proxy files go: they no longer match summary.json.
    assert not (proxy / "proxy.txt").exists()
    assert json.loads((proxy / "summary.json").read_text())["num_selected"] == 100
    assert json.loads((proxy / OWNER_FILE).read_text())["run"] == run_id


def test_same_tool_file_outputs_replace_their_own_kind(tmp_path, scores, scorer, capsys):
    from proxynas_fast.output_owner import OwnershipError, check_file_owner

    own_scores = make_owned("score", tmp_path / "e.txt", scores, capsys)
    own_scorer = make_owned("train_scorer", tmp_path / "s.th", scores, capsys)
    check_file_owner(own_scores, "score")
    check_file_owner(own_scorer, "train_scorer")
    summary = tmp_path / "e.txt.json"  # score's summary beside its score file: replaced by the next score
    summary.write_text('{"examples": 1000}\n')
    check_file_owner(summary, "score", flag="--summary-out", kind="json")
    with pytest.raises(OwnershipError, match=r"^--summary-out .*: exists and is not a JSON file"):
        check_file_owner(own_scorer, "score", flag="--summary-out", kind="json")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for tool in ("score", "train_scorer"):
        with pytest.raises(OwnershipError, match=r"exists and is not a (score file|scorer checkpoint)"):
            check_file_owner(notes, tool)


def test_a_failed_run_leaves_no_folder_holding_only_its_stamp(tmp_path, scores, capsys, monkeypatch):
    from proxynas_fast.selection import __main__ as select_cli  # the select CLI's code

    def fails(*args, **kwargs):
        raise ValueError("the selection failed")

    monkeypatch.setattr(select_cli, "select", fails)  # fails inside the held, stamped folder
    out = tmp_path / "new"
    assert select_cli.main(["--entropy-file", str(scores), "--method", "random", "--count", "2",
                            "--out", str(out)]) == 2
    assert "the selection failed" in capsys.readouterr().err
    assert not out.exists()
