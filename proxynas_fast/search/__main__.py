"""`python -m proxynas_fast.search`: proxy selection + architecture search (see --help)."""
from __future__ import annotations

import sys

from proxynas_fast.data import DatasetError
from proxynas_fast.entropy_file import EntropyFileError
from proxynas_fast.loaders import ImageFileError

from .config import build_parser, overrides_from_args, resolve_config
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
    from .pipeline import run_search

    try:
        config = resolve_config(overrides_from_args(args))
        run_search(config)
    except (SearchError, DatasetError, EntropyFileError, ImageFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
