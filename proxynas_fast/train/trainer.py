"""The training loop: SGD + schedule, auxiliary loss, drop-path ramp, AMP, atomic resumable checkpoints.

A checkpoint is written after every epoch (tmp file + os.replace). It holds everything the next epoch
depends on: weights, optimizer momentum, scheduler, AMP scaler, and the RNG states of torch (CPU and
every CUDA device), numpy and python. The loaders are re-seeded per epoch through `set_epoch`, so a
run killed at any point and resumed with `--resume` ends with exactly the weights of an
uninterrupted run (bit-exact on CPU; on CUDA as far as cuDNN is deterministic).
"""
from __future__ import annotations

import json
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.nn as nn

from proxynas_fast.divergence import describe_kept, floating_state, stop_if_diverged
from proxynas_fast.atomic import atomic_torch_save, atomic_write_text, remove_stale_temporaries
from proxynas_fast.progress import open_progress
from proxynas_fast.rng import capture_rng_state, restore_rng_state
from proxynas_fast.run_folder import check_output_dir, same_file
from proxynas_fast.safe_load import UnsafeFileError, load_plain
from proxynas_fast.train.config import TrainConfig
from proxynas_fast.train.networks import count_parameters

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"  # the one before: the fallback when the newest is unreadable
LOG_NAME = "log.jsonl"
RESULTS_NAME = "results.json"

# Options that only change how a run executes, not what it computes: they may differ on resume.
SYNC_EVERY = 20  # training steps between reads of the running loss (each read syncs a GPU)

_FILE_OPTIONS = {"arch"}  # a genotype.json: the same file however spelled, or one of the same content
_RUNTIME_ONLY = {"out", "data_dir", "device", "progress", "eval_every", "loader_backend", "extra"}


# ----------------------------------------------------------------------------------------- helpers

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class CheckpointError(ValueError):
    """A training checkpoint that cannot be used; the message names the file."""


def load_checkpoint(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        state = load_plain(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except UnsafeFileError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read the checkpoint: the file is truncated or corrupt "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (a {type(state).__name__})")
    for key in ("epoch", "model", "optimizer", "scheduler", "rng", "config"):
        if key not in state:
            raise CheckpointError(f"{path}: not a training checkpoint (missing {key!r})")
    return state


def check_train_output(out_dir, resume: bool) -> Path:
    """Before any work: --out can be written, and without --resume holds no run to overwrite."""
    out = check_output_dir(out_dir)
    existing = [p for p in (out / CHECKPOINT_NAME, out / PREVIOUS_CHECKPOINT_NAME) if p.exists()]
    if existing and not resume:
        raise FileExistsError(f"{existing[0]} exists: pass --resume to continue that run, or choose another --out")
    return out


def describe_saved(out_dir) -> str:
    """What a run folder holds to resume from, in words (for the Ctrl-C line)."""
    out = Path(out_dir)
    unreadable = []
    for p in (out / CHECKPOINT_NAME, out / PREVIOUS_CHECKPOINT_NAME):
        if p.is_file():
            try:
                state = load_plain(p)
                return f"the checkpoint after epoch {int(state['epoch'])}/{int(state['config']['epochs'])} is saved in {p}"
            except Exception:  # noqa: BLE001 - only for a message; try the previous one
                unreadable.append(p)
    if unreadable:
        return f"{out} holds no readable checkpoint ({unreadable[0]} cannot be read or is refused)"
    return f"no epoch had finished, so {out} holds no checkpoint yet"


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Stepped once per epoch: cosine to 0 over the run (DARTS CIFAR) or lr*gamma^(epoch//step) (ImageNet)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=0.0)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)


def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, amp: str = "none",
             channels_last: bool = False) -> Dict[str, float]:
    """Mean cross-entropy (no smoothing), top-1 and top-5 accuracy in percent over the loader."""
    model.eval()
    loss_sum, correct1, correct5, count = 0.0, 0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits, _ = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        count += y.numel()
    if count == 0:
        raise ValueError("the test loader yielded no examples")
    return {"test_loss": loss_sum / count, "test_acc": 100.0 * correct1 / count,
            "test_top5": 100.0 * correct5 / count, "test_examples": count}


# ----------------------------------------------------------------------------------------- trainer

class Trainer:
    """Trains `model` for `cfg.epochs`, checkpointing into `out_dir` after every epoch.

    `train_loader` / `test_loader`: iterables of (x, y) batches with `len()`; `set_epoch(e)` is called
    when present so that shuffling and augmentation are a function of (seed, epoch).
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_loader, test_loader,
                 device: torch.device, out_dir: Path, meta: Optional[Dict[str, Any]] = None):
        self.cfg = cfg
        self.device = device
        self.out_dir = Path(out_dir)
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.meta = dict(meta or {})
        self.model = model.to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.start_epoch = 0
        self.last_eval: Optional[Dict[str, float]] = None
        self.train_seconds = 0.0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def previous_checkpoint_path(self) -> Path:
        return self.out_dir / PREVIOUS_CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_NAME

    # -- checkpointing
    def state_dict(self, epochs_done: int) -> Dict[str, Any]:
        return {
            "epoch": epochs_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "loader": self.train_loader.state_dict() if hasattr(self.train_loader, "state_dict") else None,
            "config": self.cfg.to_dict(),
            "last_eval": self.last_eval,
            "train_seconds": self.train_seconds,
            "meta": self.meta,
        }

    def _check_same_run(self, saved: Dict[str, Any]) -> None:
        now = self.cfg.to_dict()
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}"
                 for k in now if k not in _RUNTIME_ONLY and saved.get(k) != now[k]
                 and not (k in _FILE_OPTIONS and same_file(saved.get(k), now[k]))]
        if diffs:
            raise ValueError(f"{self.checkpoint_path}: cannot resume with different settings ("
                             + "; ".join(diffs) + "); use the original options or a new --out")

    def _load_latest(self) -> Optional[Dict[str, Any]]:
        """The newest readable checkpoint: checkpoint.pt, else (unreadable, or a kill between the two renames of
        a save) checkpoint.prev.pt, saying so; None when there is neither."""
        latest, previous = self.checkpoint_path, self.previous_checkpoint_path
        if not latest.exists() and not previous.exists():
            return None
        try:
            return load_checkpoint(latest)
        except CheckpointError as e:
            if not previous.exists():
                raise
            problem = str(e)
        try:
            state = load_checkpoint(previous)
        except CheckpointError as e:
            raise CheckpointError(f"{problem}; the previous one is unusable too ({e})") from None
        print(f"warning: {problem}; resuming from the previous checkpoint {previous} (epoch {state['epoch']})",
              file=sys.stderr, flush=True)
        return state

    def resume(self) -> bool:
        """Load the checkpoint in out_dir if there is one; True when a run was resumed."""
        state = self._load_latest()
        if state is None:
            return False
        self._check_same_run(state["config"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        if state.get("loader") is not None and hasattr(self.train_loader, "load_state_dict"):
            self.train_loader.load_state_dict(state["loader"])  # checks seed / example count agree
        self.start_epoch = int(state["epoch"])
        self.last_eval = state.get("last_eval")
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._truncate_log(self.start_epoch)
        return True

    def _truncate_log(self, epochs_done: int) -> None:
        """Drop log lines of epochs the checkpoint does not cover (written just before a kill)."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epochs_done:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
        atomic_write_text(self.log_path, "".join(line + "\n" for line in kept))

    def _append_log(self, record: Dict[str, Any]) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    # -- one epoch
    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, model, device = self.cfg, self.model, self.device
        model.train()
        # DARTS ramps drop-path linearly from 0 so early, fragile training is not regularised away.
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        # Sums stay on the device; reading them (a GPU sync) happens only every SYNC_EVERY steps.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count = 0
        # A bar on a terminal, progress lines when stderr is redirected.
        bar = open_progress(cfg.progress, len(self.train_loader), f"epoch {epoch + 1}/{cfg.epochs}")
        step = -1
        for step, (x, y) in enumerate(self.train_loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                logits, logits_aux = model(x)
                loss = self.criterion(logits.float(), y)
                if logits_aux is not None:
                    loss = loss + cfg.auxiliary_weight * self.criterion(logits_aux.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = y.numel()
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(dim=1) == y).sum()
            count += n
            if (step + 1) % SYNC_EVERY == 0:
                self._check_finite(loss_sum, epoch, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_sum.item() / count:.3f}",
                                    acc=f"{100.0 * correct.item() / count:.1f}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if count == 0:
            raise ValueError("the training loader yielded no batches (is --batch-size larger than the data?)")
        self._check_finite(loss_sum, epoch, step)
        stop_if_diverged(f"epoch {epoch + 1}/{cfg.epochs}", {"weights": floating_state(model)},
                         self._advice(), self._kept(epoch))
        loss_sum, correct = loss_sum.item(), correct.item()
        return {"train_loss": loss_sum / count, "train_acc": 100.0 * correct / count}

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """DivergedError when the loss summed so far is not finite (one host read, with the progress read)."""
        stop_if_diverged(f"epoch {epoch + 1}/{self.cfg.epochs}, by step {step + 1}", {"training loss": loss_sum},
                         self._advice(), self._kept(epoch))

    def _advice(self) -> str:
        return f"try a lower --lr (now {self.cfg.lr:g})" + (", or --amp bf16 / none" if self.cfg.amp == "fp16" else "")

    def _kept(self, epoch: int) -> str:
        path = self.checkpoint_path if self.checkpoint_path.is_file() else None
        return describe_kept(path, epoch if path else None)

    # -- the run
    def fit(self, resume: bool = False) -> Dict[str, Any]:
        cfg = self.cfg
        check_train_output(self.out_dir, resume)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.checkpoint_path)  # left by a kill mid-save; we own the folder now
        resumed = resume and self.resume()
        if not resumed:  # a fresh run (also --resume without a checkpoint yet)
            seed_everything(cfg.seed)
            if self.log_path.exists():
                self.log_path.unlink()
        if resumed:
            self._append_log({"event": "resumed", "epoch": self.start_epoch})
        for epoch in range(self.start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            record: Dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": None}
            record.update(self.train_one_epoch(epoch))
            record["drop_path_prob"] = float(self.model.drop_path_prob)
            self.scheduler.step()
            last = epoch + 1 == cfg.epochs
            if last or (epoch + 1) % cfg.eval_every == 0:
                self.last_eval = evaluate(self.model, self.test_loader, self.device, cfg.amp, cfg.channels_last)
                record.update(self.last_eval)
            seconds = time.perf_counter() - t0
            self.train_seconds += seconds
            record["seconds"] = round(seconds, 3)
            self._append_log(record)
            atomic_torch_save(self.state_dict(epoch + 1), self.checkpoint_path,
                              keep_previous=self.previous_checkpoint_path)
            msg = (f"epoch {epoch + 1}/{cfg.epochs} lr {lr:.4g} train_loss {record['train_loss']:.4f} "
                   f"train_acc {record['train_acc']:.2f}")
            if "test_acc" in record:
                msg += f" test_acc {record['test_acc']:.2f}"
            print(msg + f" ({seconds:.1f}s)", file=sys.stderr, flush=True)
        return self.write_results()

    def write_results(self) -> Dict[str, Any]:
        if self.last_eval is None:
            raise RuntimeError("no evaluation to report: the run has not finished an epoch")
        results = {
            **self.meta,
            "arch": self.cfg.arch,
            "dataset": self.cfg.dataset,
            "epochs": self.cfg.epochs,
            "params": count_parameters(self.model),
            "params_with_auxiliary": count_parameters(self.model, include_auxiliary=True),
            **self.last_eval,
            "train_seconds": round(self.train_seconds, 3),
            "config": self.cfg.to_dict(),
        }
        atomic_write_text(self.out_dir / RESULTS_NAME, json.dumps(results, indent=1) + "\n")
        return results


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of a run's log.jsonl (event lines such as 'resumed' left out)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if "event" not in r]
