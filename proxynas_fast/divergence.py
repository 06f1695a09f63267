"""Stopping a run whose numbers stopped being finite, before it writes a checkpoint or a genotype from them.

A diverged step makes the loss NaN or infinite, and the SGD step after it spreads that into the weights (a NaN
genotype then comes out as eight max-pool edges). The runs check once an epoch, before saving: the epoch's loss
(already read for the log) and every floating-point tensor of the network, reduced on the device and read with
one host sync, so the per-step GPU path gains no sync.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch

from .cli_errors import DivergedError


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when no element of any tensor is NaN or infinite; one host read for all of them."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def floating_state(module: torch.nn.Module):
    """The module's floating-point parameters and buffers (BatchNorm statistics included)."""
    return [t for t in module.state_dict().values() if isinstance(t, torch.Tensor) and t.is_floating_point()]


def first_non_finite(checks: Mapping[str, Union[float, torch.Tensor, Iterable[torch.Tensor]]]) -> Optional[str]:
    """The name of the first entry that is not finite (a number, a tensor or tensors), or None."""
    for name, value in checks.items():
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                return name
        elif not all_finite([value] if isinstance(value, torch.Tensor) else value):
            return name
    return None


def describe_kept(path: Optional[Path], epochs_done: Optional[int]) -> str:
    if path is not None and Path(path).is_file():
        return (f"the last good checkpoint {path}" + (f" (after epoch {epochs_done})" if epochs_done else "")
                + " is kept")
    return "no epoch had finished, so nothing was saved"


def stop_if_diverged(where: str, checks, advice: str, kept: str) -> None:
    """DivergedError `<where>: non-finite <name> (the run diverged); <advice>; <kept>` when an entry of `checks`
    is not finite."""
    bad = first_non_finite(checks)
    if bad is not None:
        raise DivergedError(f"{where}: non-finite {bad} (the run diverged); {advice}; {kept}")
