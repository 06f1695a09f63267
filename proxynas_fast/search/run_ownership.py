"""A search owns its --out folder: checked before any work, locked while it runs, resumed only as itself.

- `own_search_output(config, ctx)`: rank 0 checks --out can be written and holds its lock
  (`proxynas_fast.run_folder.hold_output`) for the whole run; every rank learns rank 0's verdict, so a refused
  run fails everywhere at once.
- `interrupted_message(out, argv)`: the one line a Ctrl-C prints: what was saved and the command that resumes.

Whether and what a run resumes (options compared, the proxy checked, state restored) is `resume.py`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

from proxynas_fast.cli_errors import resume_command
from proxynas_fast.run_folder import OutputBusyError, OutputError, check_output_dir, hold_output

from .checkpoint import CHECKPOINT_NAME, read_epochs_done
from .distributed import DistContext, broadcast_object, launched_by_torchrun


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
