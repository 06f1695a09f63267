"""A search owns its --out folder: checked before any work, locked while it runs, resumed only as itself.

- `own_search_output(config, ctx)`: rank 0 checks --out can be written and holds its lock
  (`proxynas_fast.run_folder.hold_output`) for the whole run; every rank learns rank 0's verdict, so a refused
  run fails everywhere at once.
- `protected_run(out)`: a folder is a run to protect (refuse without --resume) only once it holds a
  checkpoint; a start-up failure leaves `config.json` but no checkpoint, and the same command may run again.
- `resume_differences(saved, mine)`: the options that make a resume a different run. The folder itself is not
  one (a moved run folder resumes; `runs/x/` and `runs/x` are the same), and file options compare by resolved
  path or, failing that, by content.
- `finished_run_message(config, may_differ)`: when --out holds this same search, finished, the line that says
  where its result is; the CLI then exits 0 without redoing it (a command can be run twice).
- `interrupted_message(out, argv)`: the one line a Ctrl-C prints: what was saved and the command that resumes.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Sequence

from proxynas_fast.cli_errors import resume_command
from proxynas_fast.run_folder import OutputBusyError, OutputError, check_output_dir, hold_output, same_file

from .checkpoint import CHECKPOINT_NAME, find_checkpoint, read_epochs_done
from .distributed import DistContext, broadcast_object, launched_by_torchrun
from .outputs import CONFIG_NAME, GENOTYPE_NAME

# Options naming files: equal when they resolve to the same file or the files have the same content.
FILE_OPTIONS = ("entropy_file", "scorer_checkpoint", "proxy")
# The run folder is where the saved configuration is read from: its spelling or location is not the run.
FOLDER_OPTIONS = ("out",)


@contextlib.contextmanager
def own_search_output(config, ctx: DistContext) -> Iterator[None]:
    """Rank 0 checks and locks --out for the block; the others wait for its verdict and share it."""
    if not ctx.is_main:
        problem = broadcast_object(None, ctx)
        if problem is not None:
            raise _rebuild(problem)
        yield
        return
    with contextlib.ExitStack() as stack:
        problem = None
        try:
            check_output_dir(config.out)
            stack.enter_context(hold_output(config.out, what="search", kind="folder"))
        except OutputError as e:
            problem = (type(e).__name__, str(e))
        broadcast_object(problem, ctx)
        if problem is not None:
            raise _rebuild(problem)
        yield


def _rebuild(problem) -> OutputError:
    kind, message = problem
    return (OutputBusyError if kind == OutputBusyError.__name__ else OutputError)(message)


def protected_run(out) -> bool:
    return find_checkpoint(out) is not None


def resume_differences(saved: Mapping[str, Any], mine: Mapping[str, Any], may_differ) -> List[str]:
    """Names of the options whose saved and current values make a different run."""
    differ = []
    for key in sorted(set(saved) | set(mine)):
        if key in may_differ or key in FOLDER_OPTIONS:
            continue
        a, b = saved.get(key), mine.get(key)
        if key in FILE_OPTIONS:
            if not same_file(a, b):
                differ.append(key)
        elif a != b:
            differ.append(key)
    return differ


def finished_run_message(config, may_differ) -> Optional[str]:
    """'--out X already holds this search, finished ...' when --out holds a finished run whose saved options are
    these (up to `may_differ`); None otherwise (no run, an unfinished one, other options, or --resume, which
    refreshes a finished run's outputs): the ordinary checks of --out then decide."""
    out = Path(config.out)
    if config.resume or not protected_run(out):
        return None
    try:
        saved = json.loads((out / CONFIG_NAME).read_text())
        result = json.loads((out / GENOTYPE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if result.get("finished") is not True or resume_differences(saved, config.to_dict(), may_differ):
        return None
    return (f"--out {config.out} already holds this search, finished after {result.get('epochs_done')} epochs: "
            f"the cell is in {out / GENOTYPE_NAME}; nothing to do (another --out starts a new search)")


def interrupted_message(out, argv: Optional[Sequence[str]] = None) -> str:
    """'<what is saved in out>; resume with: python -m proxynas_fast.search ... --resume'."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = resume_command("proxynas_fast.search", argv)
    if launched_by_torchrun():  # the job is resumed as it was started: by torchrun, with as many processes
        per_node = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE"))
        command = command.replace("python -m ", f"torchrun --nproc-per-node {per_node} -m ", 1)
    path = Path(out) / CHECKPOINT_NAME
    if not path.is_file():
        return f"no epoch had finished, so {out} holds no checkpoint yet; start again with: {command}"
    done = read_epochs_done(path)
    what = f"the checkpoint after epoch {done[0]}/{done[1]}" if done else "a checkpoint"
    return f"{what} is saved in {path}; resume with: {command}"

