"""Resuming a search: whether to, from what, and putting the run back where its checkpoint left it.

- `resume_if_restarted(config)`: a job torchrun restarted (--max-restarts) continues the checkpoint its failed
  attempt left, as with --resume.
- `check_out_dir(config)`: refuse to overwrite another run; on --resume, the saved options must be these, up to
  `RESUME_MAY_DIFFER` (`resume_differences`: file options compare by resolved path or content, the folder's
  spelling is not the run). `protected_run(out)`: a folder is a run to protect only once it holds a checkpoint.
- `finished_run_message(config, may_differ)`: when --out holds this same search, finished, the line that says
  where its result is; the CLI then exits 0 without redoing it (a command can be run twice).
- `checkpoint_to_resume(config)`, `read_resume_state(path, split, out_dir, device)`: the checkpoint, read and checked before any work, on the
  same proxy halves it was trained on (`check_same_proxy`: the proxy files in --out not replaced or edited).
- `restore_run(...)`: state, loaders and RNGs restored (`checkpoint.restore_state`), a diverged checkpoint
  refused, the log cut back to the checkpoint's epoch; the first epoch to run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from proxynas_fast.divergence import floating_state, stop_if_diverged
from proxynas_fast.run_folder import check_output_dir, same_file

from . import outputs
from .checkpoint import CHECKPOINT_NAME, find_checkpoint, load_checkpoint, proxy_fingerprint, restore_state
from .config import SearchConfig
from .distributed import restarted_by_torchrun
from .errors import SearchError

# Options that may change between a run and its resume without changing its result.
RESUME_MAY_DIFFER = {"proxy",  # a resume reads the copy of the proxy files saved in --out
                     "resume", "progress", "tensorboard", "log_every", "data_dir", "loader_backend", "device",
                     "download", "cuda_graphs", "dist_timeout", "loader_threads"}
# Options naming files: equal when they resolve to the same file or the files have the same content.
FILE_OPTIONS = ("entropy_file", "scorer_checkpoint", "proxy")
# The run folder is where the saved configuration is read from: its spelling or location is not the run.
FOLDER_OPTIONS = ("out",)


def protected_run(out) -> bool:
    """Whether --out holds a run to protect (refused without --resume): only once it holds a checkpoint; a
    start-up failure leaves config.json but no checkpoint, and the same command may run again."""
    return find_checkpoint(out) is not None


def resume_differences(saved: Mapping[str, Any], mine: Mapping[str, Any], may_differ) -> List[str]:
    """Names of the options whose saved and current values make a different run."""
    differ = []
    for key in sorted(set(saved) | set(mine)):
        if key in may_differ or key in FOLDER_OPTIONS:
            continue
        a, b = saved.get(key), mine.get(key)
        if key in FILE_OPTIONS:
            if not same_file(a, b):
                differ.append(key)
        elif a != b:
            differ.append(key)
    return differ


def check_out_dir(config: SearchConfig) -> Optional[Dict[str, Any]]:
    """Refuse to overwrite another run; on --resume, check the saved configuration matches. Returns the saved
    configuration (or None)."""
    out = check_output_dir(config.out)
    saved_path = out / outputs.CONFIG_NAME
    if not protected_run(out):
        return None  # no checkpoint yet (e.g. a failed start-up): nothing to protect or resume
    if not config.resume:
        missing = "" if saved_path.is_file() else f", its {outputs.CONFIG_NAME} is missing"
        raise SearchError(f"--out {config.out} already holds a search ({out / CHECKPOINT_NAME}{missing}); pass "
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


def finished_run_message(config, may_differ) -> Optional[str]:
    """'--out X already holds this search, finished ...' when --out holds a finished run whose saved options are
    these (up to `may_differ`); None otherwise (no run, an unfinished one, other options, or --resume, which
    refreshes a finished run's outputs): the ordinary checks of --out then decide."""
    out = Path(config.out)
    if config.resume or not protected_run(out):
        return None
    try:
        saved = json.loads((out / outputs.CONFIG_NAME).read_text())
        result = json.loads((out / outputs.GENOTYPE_NAME).read_text())
    except (OSError, ValueError):
        return None
    if result.get("finished") is not True or resume_differences(saved, config.to_dict(), may_differ):
        return None
    return (f"--out {config.out} already holds this search, finished after {result.get('epochs_done')} epochs: "
            f"the cell is in {out / outputs.GENOTYPE_NAME}; nothing to do (another --out starts a new search)")


def resume_if_restarted(config: SearchConfig) -> bool:
    """Turn --resume on for a job torchrun restarted whose --out holds a checkpoint; whether it did."""
    if restarted_by_torchrun() and not config.resume and protected_run(config.out):
        config.resume = True
        return True
    return False


def checkpoint_to_resume(config: SearchConfig) -> Optional[Path]:
    """The checkpoint this run continues: --out's, with --resume (None: a fresh start, also when it has none)."""
    return find_checkpoint(config.out) if config.resume else None


def read_resume_state(path: Path, split, out_dir: Path, device) -> Dict[str, Any]:
    """The checkpoint to resume, read and checked before any work (a bad one fails here), trained on `split`."""
    state = load_checkpoint(path, map_location=device)
    check_same_proxy(state, split.weights, split.arch, path, out_dir)
    return state


def restore_run(state: Dict[str, Any], path: Path, parts, loaders, log: outputs.RunLog) -> int:
    """Put the checkpoint's run back (network, optimisers, schedule, loaders, RNGs) and cut the log back to its
    epoch; the first epoch to run."""
    start_epoch = restore_state(state, parts, loaders)
    # A checkpoint of an earlier version may hold a diverged network; nothing (a genotype) is made from it.
    stop_if_diverged(f"--resume: {path} (after epoch {start_epoch})",
                     {"alphas": parts.model.arch_parameters(), "weights": floating_state(parts.model)},
                     "start a new --out with a lower --learning-rate or --arch-learning-rate",
                     "the checkpoint is left as it is")
    log.truncate_to_epoch(start_epoch)
    log.write("resume", epochs_done=start_epoch)
    return start_epoch


def check_same_proxy(state: Dict[str, Any], weights, arch, path, proxy_folder) -> None:
    """Refuse to resume a checkpoint on other proxy halves than the ones it was trained on (the proxy files in
    --out replaced or edited). Checkpoints written before the fingerprint existed are checked by size."""
    now = proxy_fingerprint(weights, arch)
    saved = state.get("proxy")
    if saved is None:
        sizes = {k: (state.get("loaders", {}).get(k) or {}).get("num_examples") for k in ("weights", "arch")}
        saved = {k: v for k, v in sizes.items() if v is not None}
        now = {k: now[k] for k in saved}
    if saved != now:
        def show(f):
            return f"{f.get('weights', '?')} weights / {f.get('arch', '?')} architecture examples" + (
                f", hash {f['sha1']}" if "sha1" in f else "")

        raise SearchError(f"--resume: the proxy files in {proxy_folder} ({show(now)}) are not those {path} was "
                          f"trained on ({show(saved)}); put the run's proxy files back or start a new --out")
