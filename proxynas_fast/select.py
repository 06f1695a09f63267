"""Select a proxy data set from a score file.

    python -m proxynas_fast.select --entropy-file F --method p1 --portion 0.1 --dataset cifar10 --seed 0 --out DIR

Writes into DIR: proxy.txt, proxy_weights.txt, proxy_arch.txt (`index entropy label`, the weight/architecture
halves of the proxy), summary.json, summary.txt and histogram.png (full set vs proxy over log10 entropy).
Per-example inputs (--features .npy [N, D], --forgetting-counts .npy or text) are indexed by data-set index,
i.e. row i belongs to the example whose `index` column is i.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .entropy_file import EntropyFileError, read_entropy_file
from .selection import (BIN_WIDTHS, describe_selectors, list_selectors, load_forgetting_counts, resolve_bin_width,
                        select, summarize_selection, write_proxy_files, write_summary)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.select", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entropy-file", help="score file with `index entropy label` lines")
    p.add_argument("--method", default="p1", help=f"selection method, one of {list_selectors()} (default p1)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--portion", type=float, help="fraction of the examples to select, in (0, 1]")
    size.add_argument("--count", type=int, help="number of examples to select")
    p.add_argument("--round-to", type=int, help="round the count down to a multiple of this (paper: 1000 on ImageNet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", choices=sorted(BIN_WIDTHS), help="sets the paper's log10 bin width")
    p.add_argument("--bin-width", type=float, help="log10 bin width (overrides --dataset)")
    p.add_argument("--class-balanced", action="store_true", help="the same count from every class")
    p.add_argument("--split-fraction", type=float, default=0.5, help="share of the proxy for weight training")
    p.add_argument("--features", help="kcenter: .npy [N, D] penultimate features, row = data-set index")
    p.add_argument("--device", help="kcenter: torch device (default cuda when available, else cpu)")
    p.add_argument("--forgetting-counts", help="forgetting: .npy or text counts by data-set index")
    p.add_argument("--out", help="output folder")
    p.add_argument("--no-proxy-files", action="store_true", help="write only the summary and the plot")
    p.add_argument("--list-methods", action="store_true", help="print the methods and their options, then exit")
    return p


def _rows_by_index(array: np.ndarray, table, path: str) -> np.ndarray:
    if array.shape[0] <= int(table.index.max()):
        raise ValueError(f"{path}: has {array.shape[0]} rows but the entropy file has example index "
                         f"{int(table.index.max())}")
    return np.asarray(array[table.index])


def _load_features(path: str, table) -> np.ndarray:
    if not Path(path).is_file():
        raise FileNotFoundError(f"features file {path} does not exist")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    if features.ndim != 2:
        raise ValueError(f"{path}: features must be a 2-D array [N, D], got shape {features.shape}")
    return _rows_by_index(features, table, path)


def run(args: argparse.Namespace) -> dict:
    if not args.entropy_file or not args.out:
        raise ValueError("--entropy-file and --out are required")
    table = read_entropy_file(args.entropy_file)
    # The summary always bins by log10 entropy, so a bin width is needed for every method.
    width = resolve_bin_width(args.bin_width, args.dataset)
    options = {"class_balanced": args.class_balanced}
    if args.round_to is not None:
        options["round_to"] = args.round_to
    if args.features:
        options["features"] = _load_features(args.features, table)
        if args.device:
            options["device"] = args.device
    if args.forgetting_counts:
        counts = load_forgetting_counts(args.forgetting_counts)
        options["forgetting_counts"] = _rows_by_index(counts, table, args.forgetting_counts)
    positions = select(args.method, table.entropy, portion=args.portion, count=args.count, labels=table.label,
                       seed=args.seed, bin_width=width, **options)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if not args.no_proxy_files:
        files = {k: str(v) for k, v in write_proxy_files(out, table, positions, fraction=args.split_fraction,
                                                          seed=args.seed).items()}
    summary = summarize_selection(
        table.entropy, table.label, positions, width, method=args.method.lower(), seed=args.seed,
        portion=args.portion, count=args.count, dataset=args.dataset, class_balanced=args.class_balanced,
        split_fraction=None if args.no_proxy_files else args.split_fraction,
        entropy_file=Path(args.entropy_file).name)
    write_summary(summary, out / "summary.json", out / "summary.txt")
    from .selection.plot import plot_selection_histogram  # matplotlib only when writing outputs

    plot_selection_histogram(summary, out / "histogram.png",
                             title=f"{args.method} on {Path(args.entropy_file).name}: "
                                   f"{summary['num_selected']} of {summary['num_examples']}")
    summary["files"] = files
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_methods:
        print(describe_selectors())
        return 0
    try:
        summary = run(args)
    except (EntropyFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    de = summary["data_entropy_nats"]
    print(f"selected {summary['num_selected']} of {summary['num_examples']} with {args.method}; "
          f"data entropy {de['selected']:.4f} (full {de['full']:.4f}) nats; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
