"""Forgetting events (Toneva et al., ICLR 2019) recorded while the scorer trains, and the `forgetting` selector.

A forgetting event is an example going from correctly to incorrectly classified between two consecutive
presentations of it. Examples never classified correctly at any presentation count as forgotten infinitely
often (they are the hardest), so `counts()` gives them +inf; examples never presented are also "never
learned" and get +inf (check `presentations()` if that matters to you).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ._arrays import as_numpy, is_tensor
from ..atomic import atomic_write
from .registry import register_selector
from .sampling import top_k


def _to_numpy(values, dtype) -> np.ndarray:
    return as_numpy(values).astype(dtype, copy=False).reshape(-1)


class ForgettingTracker:
    """Per-example forgetting counter; call `update(indices, correct)` after each minibatch's forward pass."""

    def __init__(self, num_examples: int):
        num_examples = int(num_examples)
        if num_examples <= 0:
            raise ValueError(f"num_examples must be > 0, got {num_examples}")
        self.num_examples = num_examples
        self._last_correct = np.full(num_examples, -1, dtype=np.int8)  # -1: not presented yet
        self._events = np.zeros(num_examples, dtype=np.int64)
        self._learned = np.zeros(num_examples, dtype=bool)
        self._presentations = np.zeros(num_examples, dtype=np.int64)

    def update(self, indices, correct) -> None:
        """Record one presentation of each example in `indices` (data-set indices, tensor or array) with
        whether the prediction was correct (bool tensor/array, same length). An index repeated within the
        batch counts as successive presentations in batch order."""
        idx = _to_numpy(indices, np.int64)
        if is_tensor(correct) and correct.dtype != sys.modules["torch"].bool:
            raise ValueError(f"correct must be a bool tensor, got dtype {correct.dtype}")
        ok = _to_numpy(correct, bool)
        if len(idx) != len(ok):
            raise ValueError(f"indices has {len(idx)} entries but correct has {len(ok)}")
        if len(idx) == 0:
            return
        bad = (idx < 0) | (idx >= self.num_examples)
        if bad.any():
            raise ValueError(f"example indices {idx[bad][:5].tolist()} are outside 0..{self.num_examples - 1}")
        # Rank of each entry among the entries with the same index, so repeats are applied in order.
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        group_start = np.r_[0, np.flatnonzero(np.diff(sorted_idx)) + 1]
        starts = np.repeat(group_start, np.diff(np.r_[group_start, len(idx)]))
        rank = np.empty(len(idx), dtype=np.int64)
        rank[order] = np.arange(len(idx)) - starts
        for r in range(int(rank.max()) + 1):
            sel = rank == r
            self._apply(idx[sel], ok[sel])

    def _apply(self, idx: np.ndarray, ok: np.ndarray) -> None:
        forgot = (self._last_correct[idx] == 1) & ~ok
        self._events[idx] += forgot
        self._last_correct[idx] = ok
        self._learned[idx] |= ok
        self._presentations[idx] += 1

    def counts(self) -> np.ndarray:
        """float64 [num_examples]: forgetting events; +inf for examples never classified correctly."""
        out = self._events.astype(np.float64)
        out[~self._learned] = np.inf
        return out

    def presentations(self) -> np.ndarray:
        return self._presentations.copy()

    def state_dict(self) -> dict:
        import torch

        return {
            "num_examples": torch.tensor(self.num_examples),
            "last_correct": torch.from_numpy(self._last_correct.copy()),
            "events": torch.from_numpy(self._events.copy()),
            "learned": torch.from_numpy(self._learned.copy()),
            "presentations": torch.from_numpy(self._presentations.copy()),
        }

    def load_state_dict(self, state: dict) -> None:
        expected = {"num_examples", "last_correct", "events", "learned", "presentations"}
        if set(state) != expected:
            raise ValueError(f"forgetting state has keys {sorted(state)}, expected {sorted(expected)}")
        n = int(state["num_examples"])
        if n != self.num_examples:
            raise ValueError(f"forgetting state is for {n} examples, this tracker has {self.num_examples}")
        arrays = {k: _to_numpy(state[k], dt) for k, dt in
                  (("last_correct", np.int8), ("events", np.int64), ("learned", bool), ("presentations", np.int64))}
        for key, arr in arrays.items():
            if len(arr) != n:
                raise ValueError(f"forgetting state {key!r} has {len(arr)} entries, expected {n}")
        self._last_correct = arrays["last_correct"].copy()
        self._events = arrays["events"].copy()
        self._learned = arrays["learned"].copy()
        self._presentations = arrays["presentations"].copy()

    def save(self, path) -> None:
        """Atomic torch.save of the state (tmp file + os.replace)."""
        import torch

        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))

    @classmethod
    def load(cls, path) -> "ForgettingTracker":
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "num_examples" not in state:
            raise ValueError(f"{path}: not a ForgettingTracker state (no 'num_examples')")
        tracker = cls(int(state["num_examples"]))
        tracker.load_state_dict(state)
        return tracker

    def save_counts(self, path) -> None:
        """Write counts() for the selection CLI: .npy, or text with one value per line (inf allowed)."""
        counts = self.counts()

        def write(tmp):
            if Path(path).suffix == ".npy":
                with open(tmp, "wb") as f:
                    np.save(f, counts)
            else:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write("".join(f"{int(c)}\n" if np.isfinite(c) else "inf\n" for c in counts))

        atomic_write(path, write)


def load_forgetting_counts(path) -> np.ndarray:
    """Counts by data-set index from .npy (1-D) or text: one value per line (line i = example i) or
    `index count` lines. `inf` marks never-learned examples. Errors name the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"forgetting-counts file {path} does not exist")
    if path.suffix == ".npy":
        try:
            counts = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npy array ({e})") from None
        if counts.ndim != 1:
            raise ValueError(f"{path}: forgetting counts must be 1-D, got shape {counts.shape}")
        try:
            return check_forgetting_counts(counts.astype(np.float64), str(path))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
    rows, width = [], None
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.split()
            if len(parts) not in (1, 2) or (width is not None and len(parts) != width):
                raise ValueError(f"{path}:{lineno}: expected 'count' or 'index count' "
                                 f"(the same on every line), got {s[:80]!r}")
            width = len(parts)
            try:
                rows.append((int(parts[0]), float(parts[1])) if width == 2 else (len(rows), float(parts[0])))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: cannot parse {s[:80]!r}") from None
    if not rows:
        raise ValueError(f"{path}: no forgetting counts")
    index = np.array([r[0] for r in rows], dtype=np.int64)
    if index.min() < 0 or len(np.unique(index)) != len(index):
        raise ValueError(f"{path}: indices must be distinct and >= 0")
    counts = np.full(int(index.max()) + 1, np.nan)
    counts[index] = [r[1] for r in rows]
    missing = np.flatnonzero(np.isnan(counts))
    if missing.size:
        raise ValueError(f"{path}: no count for example indices {missing[:5].tolist()}")
    return check_forgetting_counts(counts, str(path))


def check_forgetting_counts(counts, name: str = "forgetting_counts") -> np.ndarray:
    c = as_numpy(counts).astype(np.float64)
    if c.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {c.shape}")
    if np.isnan(c).any() or (c < 0).any():
        bad = np.flatnonzero(np.isnan(c) | (c < 0))
        raise ValueError(f"{name} must be >= 0 (inf allowed), bad at positions {bad[:5].tolist()}")
    return c


@register_selector(
    "forgetting",
    options={"forgetting_counts": "array [N] of forgetting events per example (inf = never learned), "
                                  "e.g. ForgettingTracker.counts()"},
    per_example_options=("forgetting_counts",),
    required_options=("forgetting_counts",),
)
def select_forgetting(entropy, count, rng, *, bin_width=None, forgetting_counts=None):
    """The most often forgotten examples (never-learned first); ties broken by seed."""
    counts = check_forgetting_counts(forgetting_counts)
    if len(counts) != len(entropy):
        raise ValueError(f"forgetting_counts has {len(counts)} entries but there are {len(entropy)} examples")
    return top_k(counts, count, rng)
