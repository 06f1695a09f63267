"""The whole search pipeline: entropies (read, or scored) -> proxy selection -> 50/50 split -> search.

`run_search(config)` runs it in this process; under torchrun every process calls it and they cooperate
(DDP). Output files are described in `outputs.py`; resuming is described in `checkpoint.py`. Of a JPEG
folder only the proxy's images are decoded, unless the run scores the whole training set (`needs_all_images`).
"""
from __future__ import annotations

import json
import os
import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from proxynas_fast.darts import Architect
from proxynas_fast.darts.genotypes import genotype_to_dict
from proxynas_fast.data import dataset_info, load_dataset, materialize
from proxynas_fast.divergence import describe_kept, floating_state, stop_if_diverged
from proxynas_fast.entropy_file import EntropyTable, read_entropy_file, write_entropy_file
from proxynas_fast.loaders import ResidentLoader, build_imagenet_loader, select_files
from proxynas_fast.loaders.imagenet import LoaderBackendError, check_backend
from proxynas_fast.loaders.sharding import derived_seed
from proxynas_fast.run_folder import check_output_dir
from proxynas_fast.scorer_weights import scorer_weights_source
from proxynas_fast.scoring import CheckpointError, load_scorer, score_dataset
from proxynas_fast.selection import PROXY_FILES, get_selector, select, split_proxy, write_proxy_files
from proxynas_fast.threads import current_load, threads_for_load, usable_cores

from . import checkpoint as ckpt
from . import outputs
from .config import PRESETS, SearchConfig, default_backend
from .distributed import (DistContext, RanksLost, barrier, broadcast_, broadcast_object, convert_sync_batchnorm,
                          max_difference_from_rank0, process_group, restarted_by_torchrun, wrap_model)
from .errors import SearchError
from .loop import EpochMetrics, train_epoch, validate
from .run_ownership import interrupted_message, own_search_output, protected_run, resume_differences
from .proxy_dir import ProxyFolder, check_proxy_matches, read_proxy_dir, write_proxy_copy
from .steps import SearchSteps
from .strategies import get_strategy
from .timing import PhaseTimes, describe_split

# Fields that may change between a run and its resume without changing its result.
RESUME_MAY_DIFFER = {"proxy",  # a resume reads the copy of the proxy files saved in --out
                     "resume", "progress", "tensorboard", "log_every", "data_dir", "loader_backend", "device",
                     "download", "cuda_graphs", "dist_timeout", "loader_threads"}
SCORED_ENTROPY_NAME = "entropy.txt"


@dataclass
class ProxySplit:
    """The proxy set by data-set index (sorted), and its weight / architecture halves."""

    selected: np.ndarray
    weights: np.ndarray
    arch: np.ndarray
    entropy_source: Optional[str] = None  # the entropy file used (None: random selection without one)


@dataclass
class SearchComponents:
    model: nn.Module
    forward_model: nn.Module  # DDP wrapper, or the model
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    architect: Any


@dataclass
class SearchResult:
    """What `run_search` returns. `split` holds data-set indices; the `loaders` hold only the proxy's decoded
    examples, so their example positions index the proxy halves, not the data set."""

    out_dir: Path
    genotype: Any
    epochs_done: int
    split: ProxySplit
    loaders: Dict[str, Any] = field(default_factory=dict)
    history: list = field(default_factory=list)  # the per-epoch log records of this invocation
    model: Optional[nn.Module] = None


# ----------------------------------------------------------------------------------------------- setup
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """--deterministic: deterministic kernels everywhere; on CUDA, ops without one only warn (bitwise equality
    is promised on CPU). Otherwise let cuDNN pick the fastest algorithms."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def check_out_dir(config: SearchConfig) -> Optional[Dict[str, Any]]:
    """Refuse to overwrite another run; on --resume, check the saved configuration matches. Returns the saved
    configuration (or None)."""
    out = check_output_dir(config.out)
    saved_path = out / outputs.CONFIG_NAME
    if not protected_run(out):
        return None  # no checkpoint yet (e.g. a failed start-up): nothing to protect or resume
    if not config.resume:
        missing = "" if saved_path.is_file() else f", its {outputs.CONFIG_NAME} is missing"
        raise SearchError(f"--out {config.out} already holds a search ({out / ckpt.CHECKPOINT_NAME}{missing}); pass "
                          "--resume to continue it or choose another --out")
    if not saved_path.is_file():
        return None  # the checkpoint alone: it holds what is resumed
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as e:
        raise SearchError(f"--resume: {saved_path} cannot be read ({e}); it says which options the run used") from None
    mine = config.to_dict()
    # Options added since the run was saved had their defaults then (e.g. sync_bn: off).
    saved = {**{k: v for k, v in SearchConfig(config.dataset, config.out).to_dict().items() if k not in saved},
             **saved}
    differ = resume_differences(saved, mine, RESUME_MAY_DIFFER)
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {mine.get(k)!r}" for k in differ[:6])
        raise SearchError(f"--resume: the options differ from the run saved in {saved_path} ({detail}); "
                          "resume with the same options or choose another --out")
    return saved


def needs_all_images(config: SearchConfig) -> bool:
    """Whether the run reads the pixels of every training example: to score them (--scorer-checkpoint without
    --entropy-file or --proxy), or for a selector with per-example options (kcenter: features of a scorer pass).
    Otherwise a JPEG folder loads lazily and only the proxy's images are decoded (`proxy_examples`)."""
    if config.proxy:
        return False
    if config.scorer_checkpoint and not config.entropy_file:
        return True
    return bool(config.selection) and bool(get_selector(config.selection).per_example_options)


def load_train_set(config: SearchConfig):
    """The training set: decoded whole when `needs_all_images`, else (an image folder) decoded on demand."""
    data_dir = config.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SearchError(f"--data-dir {data_dir} does not exist (or is not a folder)")
    return load_dataset(config.dataset, data_dir, "train", download=config.download,
                        lazy=not needs_all_images(config))


# --------------------------------------------------------------------------------------- entropy + proxy
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


# --------------------------------------------------------------------------------------------- loaders
def proxy_examples(dataset, split: ProxySplit) -> Tuple[Any, ProxySplit]:
    """(the examples of both halves, in index order; the split re-indexed into them). Of a lazily loaded image
    folder only these are decoded (a corrupt file elsewhere is never read); the halves keep their examples and
    their order, so the loaders draw the same batches as over the whole set."""
    needed = np.union1d(split.weights, split.arch)
    if np.array_equal(needed, np.arange(len(dataset))):
        return materialize(dataset), split
    local = ProxySplit(np.arange(len(needed)), np.searchsorted(needed, split.weights),
                       np.searchsorted(needed, split.arch), split.entropy_source)
    return dataset.subset(needed), local


def build_loaders(config: SearchConfig, dataset, split: ProxySplit, *, rank: int, world_size: int,
                  device: torch.device) -> Dict[str, Any]:
    """{"weights", "arch"}: augmented, shuffled training batches of each half (incomplete batches dropped);
    {"eval"}: the architecture half without augmentation, for the per-epoch validation. The loaders receive only
    the proxy's examples (`proxy_examples`)."""
    dataset, split = proxy_examples(dataset, split)
    common = dict(device=device, rank=rank, world_size=world_size)
    seeds = {"weights": derived_seed(config.seed, 1), "arch": derived_seed(config.seed, 2), "eval": 0}
    parts = {"weights": split.weights, "arch": split.arch, "eval": split.arch}
    loaders = {}
    if config.dataset == "imagenet":
        threads = config.loader_threads or free_cores()
        for key, part in parts.items():
            files, labels = select_files(dataset.files, dataset.labels, part)
            train = key != "eval"
            loaders[key] = build_imagenet_loader(
                files, labels, config.batch_size, train=train, backend=config.loader_backend,
                seed=seeds[key], image_size=config.image_size or 224, drop_last=train, num_threads=threads,
                store_size=config.store_size, **common)
    else:
        for key, part in parts.items():
            train = key != "eval"
            loaders[key] = ResidentLoader(
                dataset.images, dataset.labels, config.batch_size, train=train, mean=dataset.mean,
                std=dataset.std, pad=4, flip=True, cutout=config.cutout if train else 0, shuffle=train,
                drop_last=train, seed=seeds[key], indices=part, **common)
    return loaders


# ----------------------------------------------------------------------------------------------- model
def free_cores() -> int:
    """The cores the other jobs on this machine leave free (at least 1): the default --loader-threads."""
    return threads_for_load(usable_cores(), current_load())


def decode_seconds(loaders: Dict[str, Any]) -> float:
    """Seconds the loaders spent building their image stores (decoding the proxy's files once)."""
    return sum(loader.store_build.seconds for loader in loaders.values() if hasattr(loader, "store_build"))


def build_components(config: SearchConfig, num_classes: int, device: torch.device, ctx: DistContext,
                     backend: str) -> SearchComponents:
    strategy = get_strategy(config.strategy)
    criterion = nn.CrossEntropyLoss().to(device)
    model = strategy.build_model(dataset=config.dataset, C=config.init_channels, num_classes=num_classes,
                                 layers=config.layers, criterion=criterion, backend=backend).to(device)
    if config.sync_bn and ctx.enabled:  # before DDP and the optimizer see the modules
        convert_sync_batchnorm(model)
    broadcast_(model.arch_parameters(), ctx)  # same start everywhere (DDP broadcasts the weights)
    # foreach: one call per update stage for all weights (torch's CPU default loops over the ~500 tensors in
    # Python); the same updates, bitwise
    optimizer = torch.optim.SGD(model.weights_parameters(), config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs, eta_min=config.learning_rate_min)
    architect = Architect(model, config)
    return SearchComponents(model, wrap_model(model, ctx), criterion, optimizer, scheduler, architect)


def _metrics(prefix: str, m: Optional[EpochMetrics]) -> Dict[str, Optional[float]]:
    """The epoch record's entries of `m`; None (a skipped validation): loss and accuracy None, 0 seconds."""
    if m is None:
        return {f"{prefix}_loss": None, f"{prefix}_acc": None, f"{prefix}_seconds": 0.0}
    return {f"{prefix}_loss": m.loss, f"{prefix}_acc": m.accuracy, f"{prefix}_seconds": round(m.seconds, 3)}


def validates_after(epoch: int, config: SearchConfig) -> bool:
    """Whether epoch `epoch` (0-based) ends with a validation pass: every `validate_every` epochs and after the last
    (validate_every 0: after the last only)."""
    last = epoch + 1 == config.epochs
    return last or (config.validate_every > 0 and (epoch + 1) % config.validate_every == 0)


def write_results(out_dir: Path, parts: SearchComponents, config: SearchConfig, epochs_done: int,
                  times: Optional[PhaseTimes] = None) -> Any:
    """genotype.json and alphas.pt, then the cell drawings (timed as outputs `genotype` and `graphs`)."""
    times = times or PhaseTimes()
    with times.phase("outputs", "genotype"):
        genotype = parts.model.genotype()
        outputs.write_genotype(out_dir, genotype, dataset=config.dataset, strategy=config.strategy,
                               epochs_done=epochs_done, epochs=config.epochs, finished=epochs_done >= config.epochs)
        outputs.save_alphas(out_dir, parts.model)
    with times.phase("outputs", "graphs"):
        outputs.draw_genotype(out_dir, genotype, title_prefix=f"{config.strategy} on {config.dataset}: ")
    return genotype


# ------------------------------------------------------------------------------------------------ main
def run_search(config: SearchConfig, *, init_method: Optional[str] = None, rank: Optional[int] = None,
               world_size: Optional[int] = None) -> SearchResult:
    """Run the whole pipeline; under torchrun (or with init_method/rank/world_size) as one of several ranks."""
    config.validate()
    try:
        with process_group(config.device, init_method=init_method, rank=rank, world_size=world_size,
                           timeout_s=config.dist_timeout) as ctx, own_search_output(config, ctx):
            return _run(config, ctx)
    except RanksLost as e:
        raise SearchError(f"{e}; {interrupted_message(config.out)}") from None


def _say(ctx: DistContext, text: str) -> None:
    if ctx.is_main:
        print(text, flush=True)


def _split_from_proxy_folder(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext,
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


def _select_and_write(config: SearchConfig, dataset, out_dir: Path, ctx: DistContext,
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
            split = _split_from_proxy_folder(config, dataset, out_dir, ctx, proxy)
    if split is None:
        with times.phase("data", "score"):
            entropy_path = entropy_source(config, dataset, out_dir, ctx)
        with times.phase("data", "select"):
            split = _select_and_write(config, dataset, out_dir, ctx, entropy_path)
    check_batches_fit(config, split, ctx.world_size)
    return split


@dataclass
class _RunData:
    """What the data phase of a run hands on: the training set, the proxy halves and, when resuming, the
    checkpoint read (and checked) before any work."""

    dataset: Any
    split: ProxySplit
    checkpoint_path: Optional[Path] = None
    saved_state: Optional[Dict[str, Any]] = None


def _start_run(config: SearchConfig, ctx: DistContext) -> str:
    """Check --out (every rank, before rank 0 writes into it), set determinism; the backend the run uses. A job
    torchrun restarted (--max-restarts) continues the checkpoint its failed attempt left, as with --resume."""
    if restarted_by_torchrun() and not config.resume and protected_run(config.out):
        config.resume = True
        _say(ctx, f"torchrun restarted the job: resuming {config.out} from its checkpoint")
    check_out_dir(config)
    barrier(ctx)
    configure_determinism(config.deterministic, ctx.device)
    if config.dataset == "imagenet":
        try:
            check_backend(config.loader_backend)  # DALI asked for but missing: refused before any work
        except LoaderBackendError as e:
            raise SearchError(str(e)) from None
    return config.backend or default_backend(ctx.device)


def _load_data(config: SearchConfig, out_dir: Path, ctx: DistContext, times: PhaseTimes) -> _RunData:
    """Training set, proxy halves and the checkpoint to resume; rank 0 then writes config.json."""
    with times.phase("data", "load"):
        existing = ckpt.find_checkpoint(out_dir) if config.resume else None
        # --proxy is read and checked before the data set loads; a resume uses the copy saved in --out instead.
        proxy = read_proxy_dir(config.proxy) if config.proxy and existing is None else None
        dataset = load_train_set(config)
    split = prepare_split(config, dataset, out_dir, ctx, resuming=existing is not None, proxy=proxy, times=times)
    data = _RunData(dataset, split, existing)
    if existing is not None:  # read and checked before any work: a bad checkpoint fails here
        with times.phase("data", "load"):
            data.saved_state = ckpt.load_checkpoint(existing, map_location=ctx.device)
        ckpt.check_same_proxy(data.saved_state, split.weights, split.arch, existing, out_dir)
    if ctx.is_main:
        with times.phase("outputs", "config"):
            outputs.write_config(out_dir, config.to_dict())
        ckpt.remove_stale_temporaries(out_dir)
    return data


def _log_start(config: SearchConfig, ctx: DistContext, log: outputs.RunLog, data: _RunData, loaders,
               backend: str) -> None:
    """A fresh start: what an earlier, failed start logged goes; the start record and line."""
    split, out_dir = data.split, Path(config.out)
    if ctx.is_main:
        log.path.unlink(missing_ok=True)
    log.write("start", config=config.to_dict(), world_size=ctx.world_size, device=str(ctx.device), backend=backend,
              torch=torch.__version__, python=platform.python_version(),
              proxy={"selected": len(split.selected), "weights": len(split.weights), "arch": len(split.arch),
                     "entropy_file": split.entropy_source, **({"folder": config.proxy} if config.proxy else {})},
              threads=torch.get_num_threads(), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
              steps_per_epoch=min(len(loaders["weights"]), len(loaders["arch"])),
              loaders={k: getattr(v, "backend", type(v).__name__) for k, v in loaders.items()})
    _say(ctx, f"search {config.strategy} on {len(split.selected)} {config.dataset} examples "
              f"({len(split.weights)} weights / {len(split.arch)} architecture), {ctx.world_size} process(es) "
              f"on {ctx.device}, backend {backend}, {config.epochs} epochs -> {out_dir}")


def _begin_epochs(config: SearchConfig, ctx: DistContext, log: outputs.RunLog, data: _RunData, parts, loaders,
                  backend: str) -> int:
    """The first epoch to run: after the checkpoint's when resuming (state restored, log cut back), else 0."""
    if data.saved_state is None:
        _log_start(config, ctx, log, data, loaders, backend)
        return 0
    start_epoch = ckpt.restore_state(data.saved_state, parts, loaders)
    # A checkpoint of an earlier version may hold a diverged network; nothing (a genotype) is made from it.
    stop_if_diverged(f"--resume: {data.checkpoint_path} (after epoch {start_epoch})",
                     {"alphas": parts.model.arch_parameters(), "weights": floating_state(parts.model)},
                     "start a new --out with a lower --learning-rate or --arch-learning-rate",
                     "the checkpoint is left as it is")
    log.truncate_to_epoch(start_epoch)
    log.write("resume", epochs_done=start_epoch)
    _say(ctx, f"resuming {Path(config.out)} after epoch {start_epoch}/{config.epochs}")
    return start_epoch


def _search_steps(config: SearchConfig, ctx: DistContext, parts: SearchComponents) -> Optional[SearchSteps]:
    """--cuda-graphs: both first-order steps replayed from CUDA graphs; None: the loop's eager steps."""
    if not config.cuda_graphs:
        return None
    if ctx.world_size > 1:
        raise SearchError("--cuda-graphs: runs one process; under torchrun use the eager steps (DDP)")
    return SearchSteps(parts.model, parts.optimizer, parts.architect.optimizer, config.grad_clip, cuda_graphs=True)


def _epoch_line(config: SearchConfig, record: Dict[str, Any]) -> str:
    val = ("no validation" if record["val_loss"] is None
           else f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.2f}%")
    return (f"epoch {record['epoch']}/{config.epochs} lr {record['lr']:.5f} train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2f}% | {val} ({record['train_seconds'] + record['val_seconds']:.1f}s)"
            f"{'' if record['arch_updates'] else ' [weights only]'}")


def _save_epoch(config: SearchConfig, parts: SearchComponents, loaders, split: ProxySplit, record: Dict[str, Any],
                log: outputs.RunLog, tb, times: PhaseTimes) -> None:
    """Rank 0 after an epoch: the epoch record, the checkpoint, genotype.json, alphas.pt and the drawings."""
    out_dir, epochs_done = Path(config.out), record["epoch"]
    with times.phase("outputs", "log"):
        log.write("epoch", **record)
        tb.scalars(epochs_done, **{k: v for k, v in record.items()
                                   if k.startswith(("train_", "val_", "lr")) and v is not None})
    with times.phase("outputs", "checkpoints"):
        ckpt.save_checkpoint(out_dir / ckpt.CHECKPOINT_NAME, dict(
            ckpt.checkpoint_state(parts, loaders, epochs_done, config),
            proxy=ckpt.proxy_fingerprint(split.weights, split.arch)))
    write_results(out_dir, parts, config, epochs_done, times)


def _run_epochs(config: SearchConfig, ctx: DistContext, parts: SearchComponents, loaders, split: ProxySplit,
                log: outputs.RunLog, start_epoch: int, times: PhaseTimes) -> list:
    """The epochs from `start_epoch` on; the per-epoch records."""
    strategy = get_strategy(config.strategy)
    steps_impl = _search_steps(config, ctx, parts)
    tb = outputs.TensorBoardLogger(Path(config.out) / "tensorboard", config.tensorboard and ctx.is_main)
    # A bar on a terminal, progress lines when stderr is redirected; none with --no-progress (or off rank 0).
    progress = config.progress is not False and ctx.is_main
    history = []
    for epoch in range(start_epoch, config.epochs):
        record = search_epoch(epoch, config, strategy, parts, loaders, ctx, log, progress, steps_impl, times)
        history.append(record)
        if ctx.is_main:
            _save_epoch(config, parts, loaders, split, record, log, tb, times)
        _say(ctx, _epoch_line(config, record))
        barrier(ctx)
    tb.close()
    return history


def _finish(config: SearchConfig, ctx: DistContext, parts: SearchComponents, log: outputs.RunLog,
            start_epoch: int, times: PhaseTimes) -> Any:
    """The final genotype; checks every rank ends with the same network; the end record and lines."""
    genotype = parts.model.genotype()
    # Every rank must end with the same network; measured, not assumed.
    rank_diff = {"alphas": max_difference_from_rank0(parts.model.arch_parameters(), ctx),
                 "weights": max_difference_from_rank0(parts.model.weights_parameters(), ctx)}
    if ctx.is_main:
        if start_epoch >= config.epochs:  # resumed a finished run: refresh the outputs
            write_results(Path(config.out), parts, config, config.epochs, times)
        split = times.split()
        log.write("end", genotype=genotype_to_dict(genotype), seconds=round(split["wall"], 3),
                  world_size=ctx.world_size, rank_max_abs_diff=rank_diff, time_split=split)
        _say(ctx, f"genotype: {genotype}")
        _say(ctx, describe_split(split))
    return genotype


def _run(config: SearchConfig, ctx: DistContext) -> SearchResult:
    times = PhaseTimes()
    out_dir = Path(config.out)
    backend = _start_run(config, ctx)
    data = _load_data(config, out_dir, ctx, times)
    seed_everything(config.seed)
    with times.phase("data", "load"):  # decodes the proxy's images when the training set loaded lazily
        proxy_set, proxy_split = proxy_examples(data.dataset, data.split)
    with times.phase("data", "loaders"):
        loaders = build_loaders(config, proxy_set, proxy_split, rank=ctx.rank, world_size=ctx.world_size,
                                device=ctx.device)
    times.move_detail("data", "loaders", "decode", decode_seconds(loaders))  # the image stores' one-time decode
    with times.phase("other", "model"):
        parts = build_components(config, data.dataset.num_classes, ctx.device, ctx, backend)
    log = outputs.RunLog(out_dir / outputs.LOG_NAME, enabled=ctx.is_main)
    start_epoch = _begin_epochs(config, ctx, log, data, parts, loaders, backend)
    history = _run_epochs(config, ctx, parts, loaders, data.split, log, start_epoch, times)
    genotype = _finish(config, ctx, parts, log, start_epoch, times)
    return SearchResult(out_dir, genotype, config.epochs, data.split, loaders, history, parts.model)


def _stop_if_diverged(epoch: int, config: SearchConfig, parts: SearchComponents, train: EpochMetrics,
                      val: Optional[EpochMetrics]) -> None:
    """DivergedError before the epoch's checkpoint and genotype.json are written from non-finite numbers
    (`val` is None in an epoch that does not validate)."""
    path = ckpt.find_checkpoint(Path(config.out))
    checks = {"training loss": train.loss}
    if val is not None:
        checks["validation loss"] = val.loss
    checks.update({"alphas": parts.model.arch_parameters(), "weights": floating_state(parts.model)})
    stop_if_diverged(
        f"epoch {epoch + 1}/{config.epochs}", checks,
        f"try a lower --learning-rate (now {config.learning_rate:g}) or --arch-learning-rate "
        f"(now {config.arch_learning_rate:g})", describe_kept(path, epoch if path else None))


def search_epoch(epoch: int, config: SearchConfig, strategy, parts: SearchComponents, loaders, ctx: DistContext,
                 log: outputs.RunLog, progress: bool, steps_impl=None,
                 times: Optional[PhaseTimes] = None) -> Dict[str, Any]:
    """Train one epoch (alpha updates from `arch_begin_epoch` on), validate, step the schedule; the log record.
    `times` gets the training phase as `search_steps` (less its batch drawing, which is data `batches`) and the
    validation pass as `validation`."""
    lr = parts.scheduler.get_last_lr()[0]
    for loader in loaders.values():
        loader.set_epoch(epoch)
    update_arch = epoch >= config.arch_begin_epoch

    def on_step(step, steps, loss, acc):
        log.write("step", epoch=epoch + 1, step=step, steps=steps, loss=loss, acc=acc)

    train = train_epoch(model=parts.model, forward_model=parts.forward_model, architect=parts.architect,
                        optimizer=parts.optimizer, criterion=parts.criterion, weight_loader=loaders["weights"],
                        arch_loader=loaders["arch"], lr=lr, grad_clip=config.grad_clip, update_arch=update_arch,
                        unrolled=strategy.unrolled, ctx=ctx, device=ctx.device, progress=progress,
                        description=f"epoch {epoch + 1}/{config.epochs}", on_step=on_step,
                        log_every=config.log_every, steps_impl=steps_impl)
    if validates_after(epoch, config):
        val = validate(parts.model, parts.criterion, loaders["eval"], ctx, ctx.device, progress=progress,
                       description=f"epoch {epoch + 1}/{config.epochs} validation")
    else:
        val = None
    if times is not None:
        times.add("search_steps", train.seconds - train.data_seconds)
        times.add("data", train.data_seconds, "batches")
        times.add("validation", val.seconds if val is not None else 0.0)
    _stop_if_diverged(epoch, config, parts, train, val)
    parts.scheduler.step()
    return dict(epoch=epoch + 1, epochs=config.epochs, lr=lr, arch_updates=update_arch,
                **_metrics("train", train), data_seconds=round(train.data_seconds, 3), **_metrics("val", val),
                alphas=outputs.softmaxed_arch(parts.model), genotype=genotype_to_dict(parts.model.genotype()))
