"""Proxy preparation: the proxy halves a search trains on, and the proxy files it writes into --out.

In order of precedence: the halves saved in --out (a resume), those of --proxy DIR (checked against the data set
and copied into --out), or entropies -> selection -> 50/50 split. The entropies come from --entropy-file (checked
to cover the training set with its labels), or from scoring the training set with --scorer-checkpoint (every
rank scores a shard; rank 0 writes --out/entropy.txt), or none (random selection).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from proxynas_fast.data import dataset_info
from proxynas_fast.entropy_file import EntropyTable, read_entropy_file, write_entropy_file
from proxynas_fast.scorer_weights import scorer_weights_source
from proxynas_fast.scoring import CheckpointError, load_scorer, score_dataset
from proxynas_fast.selection import PROXY_FILES, select, split_proxy, write_proxy_files

from .config import PRESETS, SearchConfig
from .distributed import DistContext, barrier, broadcast_object
from .errors import SearchError
from .proxy_dir import ProxyFolder, check_proxy_matches, read_proxy_dir, write_proxy_copy
from .timing import PhaseTimes


SCORED_ENTROPY_NAME = "entropy.txt"


@dataclass
class ProxySplit:
    """The proxy set by data-set index (sorted), and its weight / architecture halves."""

    selected: np.ndarray
    weights: np.ndarray
    arch: np.ndarray
    entropy_source: Optional[str] = None  # the entropy file used (None: random selection without one)


def check_entropy_matches(table: EntropyTable, dataset, dataset_name: str) -> EntropyTable:
    """The table sorted by index, after checking it covers the data set's examples 0..N-1 with its labels."""
    t = table.sorted_by_index()
    n = len(dataset)
    where = f"the {dataset_name} training set ({n} examples)"
    m = min(len(t), n)
    bad = np.flatnonzero(t.index[:m] != np.arange(m))
    if bad.size or len(t) != n:
        if bad.size:
            p = int(bad[0])
            first = p if t.index[p] > p else int(t.index[p])
            why = (f"index {first} is missing from the file" if t.index[p] > p
                   else f"index {first} is not an example of the data set")
        elif len(t) < n:
            first, why = len(t), f"indices {len(t)}..{n - 1} are missing from the file"
        else:
            first, why = int(t.index[n]), f"index {int(t.index[n])} is beyond the data set"
        raise SearchError(f"entropy file {table.path} has {len(t)} entries but {where} needs one per example; "
                          f"first mismatching index {first}: {why}")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    wrong = np.flatnonzero(t.label != labels)
    if wrong.size:
        i = int(wrong[0])
        raise SearchError(f"entropy file {table.path}: labels disagree with {where} at {wrong.size} example(s); "
                          f"first mismatching index {i}: label {int(t.label[i])} in the file, "
                          f"{int(labels[i])} in the data set (a file for another data set or order?)")
    return t


def score_training_set(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext) -> Path:
    """Entropy file for --scorer-checkpoint: every rank scores a shard of the training set (gathered in index
    order), rank 0 writes --out/entropy.txt; a resumed or repeated run reuses that file."""
    path = out_dir / SCORED_ENTROPY_NAME
    if broadcast_object(path.is_file(), ctx):  # rank 0's view, taken before anyone writes it
        return path
    ckpt_path = Path(config.scorer_checkpoint)
    if not ckpt_path.is_file():
        raise SearchError(f"--scorer-checkpoint {ckpt_path} does not exist; {scorer_weights_source(config.dataset)}")
    info = dataset_info(config.dataset)
    arch = config.scorer_arch or info.scorer_arch
    try:
        scorer = load_scorer(arch, ckpt_path, dataset.num_classes)
    except (CheckpointError, ValueError) as e:
        raise SearchError(f"--scorer-checkpoint: {e}") from None
    result = score_dataset(scorer, dataset, mean=info.scorer_mean, std=info.scorer_std, device=ctx.device,
                           bin_width=info.bin_width, image_size=config.image_size or 224)
    if ctx.is_main:
        write_entropy_file(path, np.arange(len(result.entropy)), result.entropy, result.labels)
        print(f"scored {len(result.entropy)} {config.dataset} examples with {arch} ({ckpt_path}): top-1 "
              f"{100 * result.top1:.2f}% -> {path}", flush=True)
    barrier(ctx)
    return path


def select_proxy(config: SearchConfig, dataset, entropy_path: Optional[Path]) -> tuple:
    """(ProxySplit, table): the selected data-set indices and their halves; `table` has one row per example
    (entropy NaN when selecting at random without an entropy file)."""
    n = len(dataset)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if entropy_path is not None:
        table = check_entropy_matches(read_entropy_file(entropy_path), dataset, config.dataset)
        values = table.entropy
    else:
        table = EntropyTable(np.arange(n, dtype=np.int64), np.full(n, np.nan), labels, "<none>")
        values = np.zeros(n)  # `random` ignores the values
    try:
        positions = select(config.selection, values, portion=config.portion, count=config.count, labels=labels,
                           seed=config.seed, bin_width=config.bin_width, dataset=config.dataset,
                           **config.selection_options)
        weights, arch = split_proxy(positions, config.weight_fraction, config.seed)
    except ValueError as e:
        raise SearchError(f"proxy selection ({config.selection}): {e}") from None
    split = ProxySplit(positions, weights, arch, str(entropy_path) if entropy_path is not None else None)
    return split, table


def read_saved_split(out_dir: Path) -> Optional[ProxySplit]:
    """The halves written by an earlier run of this --out (resume uses exactly those examples)."""
    paths = {k: out_dir / name for k, name in PROXY_FILES.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    read = {k: read_entropy_file(p, allow_nonfinite=True).index for k, p in paths.items()}
    return ProxySplit(np.sort(read["all"]), np.sort(read["weights"]), np.sort(read["arch"]))


def check_batches_fit(config: SearchConfig, split: ProxySplit, world_size: int) -> None:
    need = config.batch_size * world_size
    if min(len(split.weights), len(split.arch)) < need:
        size = (f"--proxy {config.proxy}" if config.proxy else
                f"--count {config.count}" if config.count is not None else f"--portion {config.portion}")
        raise SearchError(
            f"{size} selects {len(split.selected)} examples of {config.dataset} ({len(split.weights)} for the "
            f"weights, {len(split.arch)} for the architecture), but with --batch-size {config.batch_size} on "
            f"{world_size} process(es) each half needs at least {need} examples for one batch; "
            + _batch_fit_hint(config, min(len(split.weights), len(split.arch)) // world_size))


def _batch_fit_hint(config: SearchConfig, largest: int) -> str:
    """How to make a batch fit: the largest --batch-size that does, or a larger proxy."""
    spec = PRESETS[config.preset]
    preset = (f" (--preset {config.preset} sets --batch-size {spec['common']['batch_size']} for the full "
              f"{spec['fixed']['dataset']} training set)" if "fixed" in spec else "")
    if largest < 1:
        return "raise --portion/--count"
    return f"pass --batch-size {largest} or less{preset}, or raise --portion/--count"


def split_from_proxy_folder(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext,
                             proxy: ProxyFolder) -> ProxySplit:
    """The halves of --proxy DIR, checked against the data set; rank 0 keeps a copy in --out."""
    check_proxy_matches(proxy, dataset.labels, config.dataset)
    split = ProxySplit(proxy.selected, proxy.weights, proxy.arch, None)
    check_batches_fit(config, split, ctx.world_size)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_proxy_copy(out_dir, proxy)
    return split


def entropy_source(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext) -> Optional[Path]:
    """The entropy file to select by: --entropy-file, else the training set scored with --scorer-checkpoint,
    else None (random selection)."""
    if config.entropy_file:
        return Path(config.entropy_file)
    if config.scorer_checkpoint:
        out_dir.mkdir(parents=True, exist_ok=True)
        return score_training_set(config, dataset, out_dir, ctx)
    return None


def select_and_write_proxy(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext,
                      entropy_path: Optional[Path]) -> ProxySplit:
    split, table = select_proxy(config, dataset, entropy_path)
    check_batches_fit(config, split, ctx.world_size)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_proxy_files(out_dir, table, split.selected, fraction=config.weight_fraction, seed=config.seed)
    return split


def prepare_split(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext, resuming: bool,
                  proxy: Optional[ProxyFolder] = None, times: Optional[PhaseTimes] = None) -> ProxySplit:
    """The proxy halves: those saved in --out when resuming, else those of --proxy DIR (`proxy`, read and
    checked), else entropies -> selection -> split (rank 0 writes the proxy files). Timed as data `score`
    (scoring the training set) and `select` (the rest)."""
    times = times or PhaseTimes()
    with times.phase("data", "select"):
        split = read_saved_split(out_dir) if resuming else None
        if split is None and config.proxy and proxy is None:
            proxy = read_proxy_dir(config.proxy)
        if split is None and proxy is not None:
            split = split_from_proxy_folder(config, dataset, out_dir, ctx, proxy)
    if split is None:
        with times.phase("data", "score"):
            entropy_path = entropy_source(config, dataset, out_dir, ctx)
        with times.phase("data", "select"):
            split = select_and_write_proxy(config, dataset, out_dir, ctx, entropy_path)
    check_batches_fit(config, split, ctx.world_size)
    return split
