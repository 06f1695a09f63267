"""`python -m proxynas_fast.select`: the selection stage's CLI, `proxynas_fast.selection.__main__` (see --help)."""
import sys

from proxynas_fast.selection.__main__ import build_parser, main  # noqa: F401  (tests and docs use both)

if __name__ == "__main__":
    sys.exit(main())
