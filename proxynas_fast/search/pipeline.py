"""The whole search pipeline: entropies (read, or scored) -> proxy selection -> 50/50 split -> search.

`run_search(config)` runs it in this process; under torchrun every process calls it and they cooperate
(DDP). This module orchestrates the run and its epochs; the pieces live beside it: proxy preparation in
`proxy_prep.py`, the training set and loaders in `data_setup.py`, the network and optimisers in `components.py`,
checkpoint contents in `checkpoint.py`, resuming in `resume.py`, output files in `outputs.py`.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from proxynas_fast.darts.genotypes import genotype_to_dict
from proxynas_fast.divergence import describe_kept, floating_state, stop_if_diverged
from proxynas_fast.loaders.imagenet import LoaderBackendError, check_backend

from . import checkpoint as ckpt
from . import outputs
from .components import SearchComponents, build_components, configure_determinism, seed_everything
from .config import SearchConfig, default_backend
from .data_setup import build_loaders, decode_seconds, load_train_set, proxy_examples
from .distributed import DistContext, RanksLost, barrier, max_difference_from_rank0, process_group
from .errors import SearchError
from .loop import EpochMetrics, train_epoch, validate
from .proxy_dir import read_proxy_dir
from .proxy_prep import ProxySplit, prepare_split
from .resume import check_out_dir, checkpoint_to_resume, read_resume_state, restore_run, resume_if_restarted
from .run_ownership import interrupted_message, own_search_output
from .steps import SearchSteps
from .strategies import get_strategy
from .timing import PhaseTimes, describe_split


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


def _print_on_rank0(ctx: DistContext, text: str) -> None:
    if ctx.is_main:
        print(text, flush=True)


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
    if resume_if_restarted(config):
        _print_on_rank0(ctx, f"torchrun restarted the job: resuming {config.out} from its checkpoint")
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
        existing = checkpoint_to_resume(config)
        # --proxy is read and checked before the data set loads; a resume uses the copy saved in --out instead.
        proxy = read_proxy_dir(config.proxy) if config.proxy and existing is None else None
        dataset = load_train_set(config)
    split = prepare_split(config, dataset, out_dir, ctx, resuming=existing is not None, proxy=proxy, times=times)
    data = _RunData(dataset, split, existing)
    if existing is not None:  # read and checked before any work: a bad checkpoint fails here
        with times.phase("data", "load"):
            data.saved_state = read_resume_state(existing, split, out_dir, ctx.device)
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
    _print_on_rank0(ctx, f"search {config.strategy} on {len(split.selected)} {config.dataset} examples "
                         f"({len(split.weights)} weights / {len(split.arch)} architecture), {ctx.world_size} "
                         f"process(es) on {ctx.device}, backend {backend}, {config.epochs} epochs -> {out_dir}")


def _begin_epochs(config: SearchConfig, ctx: DistContext, log: outputs.RunLog, data: _RunData, parts, loaders,
                  backend: str) -> int:
    """The first epoch to run: after the checkpoint's when resuming (state restored, log cut back), else 0."""
    if data.saved_state is None:
        _log_start(config, ctx, log, data, loaders, backend)
        return 0
    start_epoch = restore_run(data.saved_state, data.checkpoint_path, parts, loaders, log)
    _print_on_rank0(ctx, f"resuming {Path(config.out)} after epoch {start_epoch}/{config.epochs}")
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
    outputs.write_results(out_dir, parts.model, config, epochs_done, times)


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
        _print_on_rank0(ctx, _epoch_line(config, record))
        barrier(ctx)
    tb.close()
    return history


def _finish(config: SearchConfig, ctx: DistContext, parts: SearchComponents, log: outputs.RunLog,
            start_epoch: int, times: PhaseTimes) -> Any:
    """The final genotype; checks every rank ends with the same network; the end record and lines."""
    genotype = parts.model.genotype()
    # Every rank must end with the same network; checked, not assumed.
    rank_diff = {"alphas": max_difference_from_rank0(parts.model.arch_parameters(), ctx),
                 "weights": max_difference_from_rank0(parts.model.weights_parameters(), ctx)}
    if ctx.is_main:
        if start_epoch >= config.epochs:  # resumed a finished run: refresh the outputs
            outputs.write_results(Path(config.out), parts.model, config, config.epochs, times)
        split = times.split()
        log.write("end", genotype=genotype_to_dict(genotype), seconds=round(split["wall"], 3),
                  world_size=ctx.world_size, rank_max_abs_diff=rank_diff, time_split=split)
        _print_on_rank0(ctx, f"genotype: {genotype}")
        _print_on_rank0(ctx, describe_split(split))
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
