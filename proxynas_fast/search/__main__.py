"""`python -m proxynas_fast.search`: proxy selection + architecture search (see --help)."""
from __future__ import annotations

import os
import sys

from proxynas_fast.cli_errors import run_cli
from proxynas_fast.dependencies import refuse_missing
from proxynas_fast.threads import configure_threads

from .cli_args import build_parser, overrides_from_args
from .config import resolve_config
from .errors import SearchError
from .strategies import get_strategy, list_strategies


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "list_strategies", False):
        for name in list_strategies():
            s = get_strategy(name)
            extra = ", ".join(f"{k}={v}" for k, v in s.defaults.items())
            print(f"{name}: {s.description}" + (f" (defaults: {extra})" if extra else ""))
        return 0
    if (status := refuse_missing("search")) is not None:
        return status
    try:
        threads = configure_threads(getattr(args, "threads", None))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # torch and the data stack load only now, after the thread settings (read once, when OpenMP starts).
    from proxynas_fast.data import DatasetError
    from proxynas_fast.entropy_file import EntropyFileError
    from proxynas_fast.loaders import ImageFileError
    from proxynas_fast.loaders.image_store import ImageStoreError

    from .pipeline import run_search
    from .resume import RESUME_MAY_DIFFER, finished_run_message
    from .run_ownership import interrupted_message

    print(f"threads: {threads.describe()}", flush=True)

    def body():
        config = resolve_config(overrides_from_args(args))
        finished = finished_run_message(config, RESUME_MAY_DIFFER)
        if finished is not None:  # the same command again: its result is there, nothing is redone
            if os.environ.get("RANK", "0") == "0":
                print(finished, flush=True)
            return 0
        run_search(config)

    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli(body, user_errors=(SearchError, DatasetError, EntropyFileError, ImageFileError, ImageStoreError,
                                      FileNotFoundError),
                   interrupted_message=lambda: interrupted_message(getattr(args, "out", None) or ".", argv))


if __name__ == "__main__":
    sys.exit(main())
