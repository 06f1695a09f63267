"""How every CLI ends on an ordinary mistake or a Ctrl-C: one line on stderr, a clear exit status.

`run_cli(body, user_errors=..., interrupted_message=...)`:
- `body()` returns normally: its return value (None -> 0) is the exit status;
- one of `user_errors` (or an `OutputError`) is raised: `error: <message>` on one line, exit 2;
- KeyboardInterrupt: `interrupted: <interrupted_message()>` on one line, exit 130 (no traceback). The message
  says what was saved and the command that resumes (`resume_command` builds the latter). Exit 130 holds under
  `python -m` too, wherever the Ctrl-C landed (see `_forget_unhandled_interrupt`).
Either line starts on a line of its own, also when a progress bar was left open on stderr.
"""
from __future__ import annotations

import shlex
import sys
from typing import Callable, Iterable, Optional, Sequence, Tuple, Type

from .progress import leave_open_bars
from .run_folder import OutputError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def one_line(message) -> str:
    return " ".join(str(message).split("\n")).strip()


def run_cli(
    main_body: Callable[[], Optional[int]],
    *,
    user_errors: Tuple[Type[BaseException], ...] = (),
    interrupted_message: Callable[[], str] = lambda: "nothing was saved",
) -> int:
    try:
        status = main_body()
    except KeyboardInterrupt:
        try:
            message = interrupted_message()
        except Exception as e:  # the message must not turn a Ctrl-C into a traceback
            message = f"(what was saved is unknown: {e})"
        except KeyboardInterrupt:  # a second Ctrl-C while the message is built (it may read a checkpoint)
            message = "(interrupted again while looking at what was saved)"
        leave_open_bars()
        print(f"interrupted: {one_line(message)}", file=sys.stderr, flush=True)
        _forget_unhandled_interrupt()
        return EXIT_INTERRUPTED
    except (OutputError, *user_errors) as e:
        leave_open_bars()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0 if status is None else int(status)


def _forget_unhandled_interrupt() -> None:
    """Keep the exit status 130 after a Ctrl-C that was handled.

    CPython (3.11, and 3.12) notes a KeyboardInterrupt that ends code run from a *string* (`exec("...")`, `eval("...")`,
    `PyRun_String`: dataclass and namedtuple methods are made this way, so any lazy import can do it) as "unhandled",
    even when a caller catches it. Under `python -m` the interpreter then kills itself with SIGINT at exit (status -2
    instead of 130), so the status depended on where the signal landed. The note is cleared when the next string
    evaluation starts; evaluating one empty string here clears it. Scripts and `-c` never read the note.
    """
    exec("None", {})


def resume_command(module: str, argv: Sequence[str], add: Iterable[str] = ("--resume",)) -> str:
    """`python -m <module> <argv> --resume`, shell-quoted, without repeating flags argv already has."""
    args = list(argv)
    for flag in add:
        if flag not in args:
            args.append(flag)
    return " ".join(shlex.quote(a) for a in ["python", "-m", module, *args])
