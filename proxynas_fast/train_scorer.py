"""`python -m proxynas_fast.train_scorer`: the scorer-training CLI, `proxynas_fast.scoring.train_scorer` (see --help)."""
import sys

from proxynas_fast.scoring.train_scorer import build_parser, main  # noqa: F401  (tests and docs use both)

if __name__ == "__main__":
    sys.exit(main())
