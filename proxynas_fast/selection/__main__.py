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

from proxynas_fast.cli_errors import run_cli
from proxynas_fast.dependencies import refuse_missing
from proxynas_fast.entropy_file import EntropyFileError, read_entropy_file
from proxynas_fast.run_folder import check_output_dir, hold_output

from proxynas_fast.selection import (BIN_WIDTHS, DEFAULT_SEED, PROXY_FILES, check_bin_count, class_quotas,
                                    describe_selectors, get_selector, list_selectors, load_forgetting_counts,
                                    resolve_count, select, summarize_selection, write_proxy_files, write_summary)

from .dataset_fit import TRAIN_SIZES, check_fits_dataset, infer_dataset

DEFAULT_OUT = "runs/proxy"  # under runs/, which .gitignore covers
SUMMARY_BIN_WIDTH = 0.25  # log10 bins of the summary and plot when the method uses none and no width is known


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.select", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entropy-file", help="score file with `index entropy label` lines (required)")
    p.add_argument("--method", default="p1", help=f"selection method, one of {list_selectors()} (default p1)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--portion", type=float, help="fraction of the examples to select, in (0, 1]")
    size.add_argument("--count", type=int, help="number of examples to select")
    p.add_argument("--round-to", type=int,
                   help="round the count down to a multiple of this (paper: 1000 on ImageNet; default: no rounding)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the random draws and of the weight/architecture split (default "
                        f"{DEFAULT_SEED}, as in search)")
    p.add_argument("--dataset", choices=sorted(BIN_WIDTHS),
                   help="data set of the score file: sets the paper's log10 bin width "
                        f"({', '.join(f'{k} {v}' for k, v in sorted(BIN_WIDTHS.items()))}) and checks every "
                        "index and label against it (default: inferred when the file is a whole training set)")
    p.add_argument("--bin-width", type=float,
                   help="log10 bin width (overrides the data set's; default: the data set's, or "
                        f"{SUMMARY_BIN_WIDTH} for the summary of methods that use no bins)")
    p.add_argument("--class-balanced", action="store_true", help="the same count from every class (default off)")
    p.add_argument("--split-fraction", type=float, default=0.5,
                   help="share of the proxy for weight training; the rest trains the architecture (default 0.5)")
    p.add_argument("--features", help="kcenter: .npy [N, D] penultimate features, row = data-set index")
    p.add_argument("--device", help="kcenter: torch device (default cuda when available, else cpu)")
    p.add_argument("--forgetting-counts", help="forgetting: .npy or text counts by data-set index")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--no-proxy-files", action="store_true",
                   help="write only the summary and the plot (default: the proxy files too)")
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


def resolve_dataset(args: argparse.Namespace, table) -> tuple[str | None, bool]:
    """(data set, inferred?): --dataset, else the data set whose whole training set the file is, else None.
    A named or inferred data set has every index and label of the file checked against it."""
    dataset, inferred = args.dataset, False
    if dataset is None:
        dataset = infer_dataset(table)
        inferred = dataset is not None
    if dataset is not None:
        check_fits_dataset(table, dataset)
    return dataset, inferred


def resolve_cli_bin_width(args: argparse.Namespace, spec, dataset: str | None, table) -> float:
    """--bin-width, else the data set's, else (methods without bins) the summary's default; else an error
    naming the flags."""
    if args.bin_width is not None:
        if not np.isfinite(args.bin_width) or args.bin_width <= 0:
            raise ValueError(f"--bin-width must be a number > 0, got {args.bin_width}")
        return float(args.bin_width)
    if dataset is not None:
        return BIN_WIDTHS[dataset]
    if not spec.needs_bin_width:
        return SUMMARY_BIN_WIDTH
    sizes = ", ".join(f"{k} {v}" for k, v in TRAIN_SIZES.items())
    raise ValueError(f"--method {spec.name} bins log10(entropy) and needs a bin width: pass --dataset "
                     f"({'/'.join(sorted(BIN_WIDTHS))}) or --bin-width W; {table.path} has {len(table)} rows "
                     f"with labels {int(table.label.min())}..{int(table.label.max())}, which is no whole training "
                     f"set ({sizes} examples), so the data set cannot be inferred")


OPTION_FLAGS = {"features": "--features", "forgetting_counts": "--forgetting-counts", "device": "--device"}


def check_request(args: argparse.Namespace, spec) -> None:
    """The mistakes visible in the arguments alone, named by their flags, before any file is read."""
    if not args.entropy_file:
        raise ValueError("--entropy-file is required")
    if args.portion is None and args.count is None:
        raise ValueError("pass --portion P (0 < P <= 1) or --count N: how much to select")
    if args.portion is not None and not (np.isfinite(args.portion) and 0 < args.portion <= 1):
        raise ValueError(f"--portion must be in (0, 1], got {args.portion}")
    if args.count is not None and args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    if args.round_to is not None and args.round_to < 1:
        raise ValueError(f"--round-to must be >= 1, got {args.round_to}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if not args.no_proxy_files and not (np.isfinite(args.split_fraction) and 0 < args.split_fraction < 1):
        raise ValueError(f"--split-fraction must be in (0, 1), got {args.split_fraction}")
    given = {"features": args.features, "forgetting_counts": args.forgetting_counts}
    missing = [OPTION_FLAGS[name] for name in spec.required_options if not given.get(name)]
    if missing:
        raise ValueError(f"--method {spec.name} needs {' and '.join(missing)}: "
                         + "; ".join(spec.options[name] for name in spec.required_options if not given.get(name)))
    unused = [OPTION_FLAGS[name] for name, value in given.items() if value and name not in spec.options]
    if unused:
        raise ValueError(f"--method {spec.name} does not use {' or '.join(unused)}")


def check_degenerate_request(args: argparse.Namespace, table, width: float) -> None:
    """Requests that would run into warnings or a silently different result, refused with the reason and the
    flag: a bin width giving an absurd histogram (it bins the summary of every method), a class balance that
    cannot give every class its share."""
    try:
        check_bin_count(table.entropy, width)
    except ValueError as e:
        raise ValueError(f"--bin-width: {e}" if args.bin_width is not None else str(e)) from None
    if args.class_balanced:
        size = f"--count {args.count}" if args.count is not None else f"--portion {args.portion}"
        try:
            class_quotas(table.label, resolve_count(len(table), args.portion, args.count, args.round_to))
        except ValueError as e:
            raise ValueError(f"--class-balanced with {size}: {e}") from None


def run(args: argparse.Namespace) -> dict:
    spec = get_selector(args.method)  # an unknown method is the first thing to report
    check_request(args, spec)
    out = check_output_dir(args.out, flag="--out")
    table = read_entropy_file(args.entropy_file)
    if args.count is not None and args.count > len(table):
        raise ValueError(f"--count must be in 1..{len(table)} (the number of examples in {args.entropy_file}), "
                         f"got {args.count}")
    dataset, inferred = resolve_dataset(args, table)  # in file order: a bad row is named by its line
    # By data-set index: the selection depends on the file's content, not on the order of its lines (and is
    # the one `search` makes from the same file, which orders it so too).
    table = table.sorted_by_index()
    width = resolve_cli_bin_width(args, spec, dataset, table)
    check_degenerate_request(args, table, width)
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
    # Refuses a folder another tool or run owns (`output_owner`), then stamps it as select's.
    with hold_output(out, what="select", kind="folder", flag="--out"):
        positions = select(spec.name, table.entropy, portion=args.portion, count=args.count, labels=table.label,
                           seed=args.seed, bin_width=width, **options)
        files = {}
        if args.no_proxy_files:  # a selection made earlier in this folder must not pass for this one
            for name in PROXY_FILES.values():
                (out / name).unlink(missing_ok=True)
        else:
            files = {k: str(v) for k, v in write_proxy_files(out, table, positions, fraction=args.split_fraction,
                                                              seed=args.seed).items()}
        summary = summarize_selection(
            table.entropy, table.label, positions, width, method=spec.name, seed=args.seed,
            portion=args.portion, count=args.count, dataset=dataset, dataset_inferred=inferred,
            class_balanced=args.class_balanced,
            split_fraction=None if args.no_proxy_files else args.split_fraction,
            entropy_file=Path(args.entropy_file).name)
        write_summary(summary, out / "summary.json", out / "summary.txt")
        from .plot import plot_selection_histogram  # matplotlib only when writing outputs

        plot_selection_histogram(summary, out / "histogram.png",
                                 title=f"{spec.name} on {Path(args.entropy_file).name}: "
                                       f"{summary['num_selected']} of {summary['num_examples']}")
    summary["files"] = files
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_methods:
        print(describe_selectors())
        return 0
    if (status := refuse_missing("select")) is not None:
        return status

    def body() -> int:
        summary = run(args)
        de = summary["data_entropy_nats"]
        config = summary["config"]
        origin = f"; data set {config['dataset']} (inferred)" if config["dataset_inferred"] else ""
        print(f"selected {summary['num_selected']} of {summary['num_examples']} with {config['method']}{origin}; "
              f"data entropy {de['selected']:.4f} (full {de['full']:.4f}) nats; wrote {args.out}")
        return 0

    return run_cli(body, user_errors=(EntropyFileError, FileNotFoundError, ValueError),
                   interrupted_message=lambda: (f"select writes each file atomically, so {args.out} holds only "
                                                f"complete files; resume with: the same command"))


if __name__ == "__main__":
    sys.exit(main())
