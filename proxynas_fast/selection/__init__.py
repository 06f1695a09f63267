"""Proxy-data selection: pick a subset of training examples from their scorer entropies (or features).

    from proxynas_fast.selection import select, list_selectors
    positions = select("p1", entropy, portion=0.1, dataset="cifar10", seed=0)

`select` returns sorted positions into the entropy array (see `select_from_table` for data-set indices).
Methods (`list_selectors()`, options in `describe_selectors()`): random, p1, p2, p3 (the paper's
log-entropy histogram selections), high_entropy, low_entropy, kcenter (greedy core-set on features),
forgetting (most forgotten examples while the scorer trained). Register more with `@register_selector`.
"""
from .registry import SelectorSpec, describe_selectors, get_selector, list_selectors, register_selector
from . import methods as _methods  # noqa: F401  (registers random, p1-p3, high/low_entropy)
from . import kcenter as _kcenter  # noqa: F401  (registers kcenter)
from . import forgetting as _forgetting  # noqa: F401  (registers forgetting)
from .api import class_quotas, positions_to_indices, resolve_count, select, select_from_table
from .forgetting import ForgettingTracker, load_forgetting_counts
from .histogram import (BIN_WIDTHS, MAX_BINS, Binning, bin_numbers, check_bin_count, log_entropy_histogram,
                        resolve_bin_width)
from .kcenter import greedy_k_center
from .methods import example_probabilities, histogram_bin_weights
from .sampling import top_k, weighted_sample_without_replacement
from .split import DEFAULT_SEED, PROXY_FILES, split_proxy, write_proxy_files
from .summary import distribution_entropy, format_summary, summarize_selection, write_summary

__all__ = [
    "BIN_WIDTHS", "Binning", "DEFAULT_SEED", "ForgettingTracker", "MAX_BINS", "PROXY_FILES", "SelectorSpec",
    "bin_numbers", "check_bin_count", "class_quotas", "describe_selectors", "distribution_entropy", "example_probabilities", "format_summary", "get_selector",
    "greedy_k_center", "histogram_bin_weights", "list_selectors", "load_forgetting_counts",
    "log_entropy_histogram", "positions_to_indices", "register_selector", "resolve_bin_width", "resolve_count",
    "select", "select_from_table", "split_proxy", "summarize_selection", "top_k",
    "weighted_sample_without_replacement", "write_proxy_files", "write_summary",
]
