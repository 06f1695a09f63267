"""How every CLI ends on an ordinary mistake, a diverged run, a Ctrl-C or a SIGTERM: one line on stderr, a clear
exit status.

`run_cli(body, user_errors=..., interrupted_message=...)`:
- `body()` returns normally: its return value (None -> 0) is the exit status;
- one of `user_errors` (or an `OutputError`) is raised: `error: <message>` on one line, exit 2;
- `DivergedError` (a non-finite loss, weights or alphas): `error: <message>` on one line, exit 3;
- a full disk (ENOSPC/EDQUOT, or `atomic.DiskFullError` from a checkpoint write): `error: <file>: no space left on
  device ...` on one line, exit 2;
- KeyboardInterrupt: `interrupted: <interrupted_message()>` on one line, exit 130 (no traceback). The message
  says what was saved and the command that resumes (`resume_command` builds the latter). Exit 130 holds under
  `python -m` too, wherever the Ctrl-C landed (see `_forget_unhandled_interrupt`);
- SIGTERM (a scheduler's or torchrun's stop, `kill PID`): handled like Ctrl-C, raised as `Terminated` wherever
  the run is, so the same state is saved and the same line printed (`interrupted: SIGTERM; ...`); exit 143
  (128 + 15, the status a shell reports for a process killed by SIGTERM).
Each line starts on a line of its own, also when a progress bar was left open on stderr.
"""
from __future__ import annotations

import errno
import shlex
import signal
import sys
import threading
from typing import Callable, Iterable, Optional, Sequence, Tuple, Type

from .atomic import DiskFullError
from .progress import leave_open_bars
from .run_folder import OutputError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class DivergedError(RuntimeError):
    """The run's loss, weights or alphas stopped being finite; the message says where and what to try."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that everything that cleans up after a Ctrl-C does so here too."""


def _raise_terminated(signum, frame):
    raise Terminated()


def one_line(message) -> str:
    return " ".join(str(message).split("\n")).strip()


def run_cli(
    main_body: Callable[[], Optional[int]],
    *,
    user_errors: Tuple[Type[BaseException], ...] = (),
    interrupted_message: Callable[[], str] = lambda: "nothing was saved",
) -> int:
    # Signal handlers can only be set from the main thread (a CLI's main() called from a worker thread keeps
    # the default SIGTERM).
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        status = main_body()
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        try:
            message = interrupted_message()
        except Exception as e:  # the message must not turn a Ctrl-C into a traceback
            message = f"(what was saved is unknown: {e})"
        except KeyboardInterrupt:  # a second Ctrl-C while the message is built (it may read a checkpoint)
            message = "(interrupted again while looking at what was saved)"
        leave_open_bars()
        print(f"interrupted: {'SIGTERM; ' if terminated else ''}{one_line(message)}", file=sys.stderr, flush=True)
        _forget_unhandled_interrupt()
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except DivergedError as e:
        leave_open_bars()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    except (OutputError, *user_errors) as e:
        leave_open_bars()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        leave_open_bars()
        print(f"error: {one_line(_full_disk_message(e))}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0 if status is None else int(status)


def _full_disk_message(e: OSError) -> str:
    if isinstance(e, DiskFullError):
        return e.strerror
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}no space left on device ({e.strerror}); free space and resume"


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
