"""Architecture search on a proxy set: selection, the DARTS/PC-DARTS search loop, checkpoints and outputs.

    python -m proxynas_fast.search --dataset cifar10 --data-dir D --entropy-file F --selection p1 \
        --portion 0.1 --strategy darts --epochs 50 --out runs/NAME

Several processes (DDP; gloo on CPU, NCCL on GPU; --batch-size is per process, only rank 0 writes):

    torchrun --nproc-per-node 2 -m proxynas_fast.search ...same flags...

From Python: `run_search(resolve_config({"dataset": "cifar10", "out": "runs/x", ...}))`.
"""
from .cli_args import build_parser
from .config import PAPER_DEFAULTS, PRESETS, SearchConfig, default_backend, resolve_config
from .errors import SearchError
from .strategies import SearchStrategy, get_strategy, list_strategies


def run_search(config, **kwargs):
    """See `proxynas_fast.search.pipeline.run_search` (imported lazily: it pulls in the data stack)."""
    from .pipeline import run_search as _run

    return _run(config, **kwargs)


__all__ = ["PAPER_DEFAULTS", "PRESETS", "SearchConfig", "SearchError", "SearchStrategy", "build_parser",
           "default_backend", "get_strategy", "list_strategies", "resolve_config", "run_search"]
