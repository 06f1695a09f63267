"""Architecture search on a proxy set: selection, the DARTS/PC-DARTS search loop, checkpoints and outputs.

    python -m proxynas_fast.search --dataset cifar10 --data-dir D --entropy-file F --selection p1 \
        --portion 0.1 --strategy darts --epochs 50 --out runs/NAME

or from Python: `run_search(resolve_config({...}))`.
"""
from .config import PAPER_DEFAULTS, PRESETS, SearchConfig, build_parser, default_backend, resolve_config
from .strategies import SearchError, SearchStrategy, get_strategy, list_strategies


def run_search(config, **kwargs):
    """See `proxynas_fast.search.pipeline.run_search` (imported lazily: it pulls in the data stack)."""
    from .pipeline import run_search as _run

    return _run(config, **kwargs)


__all__ = ["PAPER_DEFAULTS", "PRESETS", "SearchConfig", "SearchError", "SearchStrategy", "build_parser",
           "default_backend", "get_strategy", "list_strategies", "resolve_config", "run_search"]
