"""Reading a .pt/.th file a user hands over (a checkpoint to resume, a scorer) without running code from it.

`torch.load(weights_only=True)` rebuilds only tensors, plain containers (dict, list, tuple, set), numbers, strings
and None; a pickle that names any other callable (a class whose `__reduce__` calls `os.system`, say) is refused
before that callable runs. NumPy arrays are let through too: earlier checkpoints of this project hold the NumPy RNG
state and forgetting counts as arrays, and an array is rebuilt from its dtype and bytes (an object array's items
go through the same restricted unpickler), so it runs nothing.

`load_plain(path)` returns the object or raises:
- `UnsafeFileError` (a ValueError) with one line naming the file and the object refused;
- a short `pickle.UnpicklingError` for junk or a pickle the restricted unpickler cannot read;
- whatever torch.load raises for a missing, truncated or foreign file (callers word those themselves).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, List

import numpy as np
import torch


class UnsafeFileError(ValueError):
    """A file holding objects other than tensors, arrays and plain containers: loading it could run code."""


def _numpy_array_globals() -> List[Any]:
    """What pickling a NumPy array names: the array rebuild function, ndarray, dtype and the dtype classes."""
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    dtype_classes = {type(np.dtype(t)) for t in ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q",
                                                 "e", "f", "d", "g", "F", "D", "O", "U", "S", "V")}
    return [_reconstruct, np.ndarray, np.dtype, *dtype_classes]


_REFUSED = re.compile(r"GLOBAL (\S+)")
_DETAIL = re.compile(r"Unsupported [^\n]*|invalid load key[^\n]*")


def load_plain(path, map_location: Any = "cpu") -> Any:
    """torch.load of `path` that builds only tensors, NumPy arrays and plain containers; see the module doc."""
    path = Path(path)
    with torch.serialization.safe_globals(_numpy_array_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            found = _REFUSED.search(str(e))
            if found is None:
                # Junk or an unsupported opcode (nothing it names is called): the caller says it cannot be read.
                # torch's own message would advise loading with weights_only=False.
                detail = _DETAIL.search(str(e))
                what = detail.group(0) if detail else "unreadable"
                raise pickle.UnpicklingError(f"not a torch file of plain data ({what})") from None
            raise UnsafeFileError(f"{path}: refused: it holds {found.group(1)}, which is not a tensor or plain data, "
                                  "and loading it could run code") from None
