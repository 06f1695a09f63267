"""Who owns an output, and the rule every tool keeps: it writes only into outputs that are its own.

Folder tools (`search`, `select`, `train`) stamp their --out folder with OWNER_FILE, `{"tool", "run", "created",
"command"}` (`run`: a random id of the run that made the folder). File tools (`score`, `train_scorer`) write
single files. The rule, checked before anything is written (`hold_output` applies it to every tool it is told
about, under the output's lock):

- a folder tool writes only into a folder that is new, empty, holds no other tool's outputs, or is stamped by
  the same tool. Whether the run in it may be continued or replaced is that tool's own rule (search: only with
  --resume and the same options; train: likewise; select: a new selection replaces the whole previous one);
- no tool writes into a folder inside another tool's run folder;
- a file tool writes no file inside a run folder (`score --out run/log.jsonl` replaced a live search's log), and
  replaces an existing file only when it is the same kind of output (a score file, a scorer checkpoint).

Folders from before the stamp are recognised by the files only their tool writes (`SIGNATURES`); a folder
whose files fit no tool (a user's own folder) is not a run folder. A refusal is one `OutputError` line naming
the flag, the owner and what to do. No torch here (the CLIs check their outputs before torch loads).
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

OWNER_FILE = ".proxynas-owner.json"
FOLDER_TOOLS = ("search", "select", "train")
FILE_TOOLS = ("score", "train_scorer")
# Files that only one folder tool writes: they tell the owner of a folder made before the stamp.
SIGNATURES = {
    "search": ("config.json", "genotype.json", "alphas.pt"),
    "train": ("results.json", "checkpoint.prev.pt"),
    "select": ("summary.json", "summary.txt", "histogram.png"),
}
# Files of a run folder whose tool cannot be told from them alone (search and train both write these).
RUN_FILES = ("checkpoint.pt", "log.jsonl")
WHAT_EACH_WRITES = {"search": "a search run", "select": "a proxy selection", "train": "a training run"}


class OwnershipError(ValueError):
    """Raised by the checks here; `run_folder` turns it into an OutputError (one line, exit 2)."""


def _read_stamp(folder: Path) -> Optional[dict]:
    try:
        stamp = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"tool": "unknown"}  # a stamp we cannot read still says someone owns the folder
    return stamp if isinstance(stamp, dict) else {"tool": "unknown"}


def folder_owner(folder) -> Optional[str]:
    """The tool owning `folder`: its stamp, else the tool its files identify, "run" for a run folder of search or
    train that cannot be told apart, None for a folder no tool owns (absent, empty, or a user's own files)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    stamp = _read_stamp(folder)
    if stamp is not None:
        return str(stamp.get("tool", "unknown"))
    try:
        names = set(os.listdir(folder))
    except OSError:
        return None
    for tool, files in SIGNATURES.items():
        if names.intersection(files) and not (tool == "select" and names.intersection(SIGNATURES["search"])):
            return tool
    return "run" if names.intersection(RUN_FILES) else None


def _describe(folder: Path, owner: str) -> str:
    if owner not in WHAT_EACH_WRITES:
        return f"{folder} holds {'the files of a search or training run' if owner == 'run' else 'a run'}"
    stamp = _read_stamp(folder) or {}
    since = f", started {stamp['created']}" if stamp.get("created") else ""
    return f"{folder} holds {WHAT_EACH_WRITES[owner]} (made by `python -m proxynas_fast.{owner}`{since})"


def _owned_ancestor(path: Path) -> Optional[tuple]:
    """(folder, owner) of the nearest folder above `path` stamped by a tool."""
    for parent in path.parents:
        stamp = _read_stamp(parent) if parent.is_dir() else None
        if stamp is not None:
            return parent, str(stamp.get("tool", "unknown"))
    return None


def check_folder_owner(path, tool: str, *, flag: str = "--out") -> None:
    """Refuse (OwnershipError) a folder output of `tool` owned by another tool or inside another run's folder."""
    folder = Path(os.path.abspath(os.path.expanduser(str(path))))
    owner = folder_owner(folder)
    if owner is not None and owner != tool and not (owner == "run" and tool in ("search", "train")):
        raise OwnershipError(f"{flag} {path}: {_describe(folder, owner)}; {tool} writes only into a folder of its own "
                             f"(new, empty, or from an earlier {tool}): choose another {flag}")
    above = _owned_ancestor(folder)
    if above is not None:
        raise OwnershipError(f"{flag} {path}: is inside {_describe(*above)}, whose files belong to that run; choose "
                             f"a {flag} outside it")


def check_file_owner(path, tool: str, *, flag: str = "--out", kind: Optional[str] = None) -> None:
    """Refuse (OwnershipError) a file output of `tool` inside a run folder, or replacing another kind of file.
    kind: what the file is (a key of KIND_NAMES; default: the tool's main output)."""
    file = Path(os.path.abspath(os.path.expanduser(str(path))))
    parent = file.parent
    owner = folder_owner(parent)
    above = (parent, owner) if owner is not None else _owned_ancestor(parent)
    if above is not None:
        raise OwnershipError(f"{flag} {path}: is inside {_describe(*above)}, whose files belong to that run; "
                             f"write {tool}'s output outside it")
    kind = kind or tool
    if file.is_file() and not _same_kind(file, kind):
        raise OwnershipError(f"{flag} {path}: exists and is not {KIND_NAMES[kind]}; {tool} replaces only its own "
                             "kind of file: choose another path or remove it first")


KIND_NAMES = {"score": "a score file (index entropy label lines)", "train_scorer": "a scorer checkpoint",
              "json": "a JSON file", "npy": "a .npy array"}


def _same_kind(file: Path, kind: str) -> bool:
    """Whether an existing file looks like an output of `kind` (an empty file is anyone's)."""
    try:
        with open(file, "rb") as f:
            head = f.read(4096)
    except OSError:
        return True  # unreadable: the write itself will say why
    if not head:
        return True
    if kind == "train_scorer":
        return head.startswith((b"PK\x03\x04", b"\x80"))  # torch.save: a zip archive, or a pickle
    if kind == "score":
        return _looks_like_score_text(head)
    if kind == "json":
        return head.lstrip()[:1] in (b"{", b"[")
    if kind == "npy":
        return head.startswith(b"\x93NUMPY")
    return True


def _looks_like_score_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        return False
    for line in text.splitlines()[:-1] or text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        try:
            int(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            return False
        return len(parts) == 3
    return True


def stamp_folder(folder, tool: str) -> None:
    """Write the owner stamp of `tool` into `folder` when no tool owns it yet. A stamped folder keeps its stamp
    (the run that made it keeps its id); one from before the stamp is left as it is (its files tell its owner, and
    a run refused there must not have changed it)."""
    folder = Path(folder)
    if folder_owner(folder) is not None:
        return
    record = {"tool": tool, "run": secrets.token_hex(8), "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])}
    tmp = folder / f"{OWNER_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, folder / OWNER_FILE)
