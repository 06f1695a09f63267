"""The decode-once image store: a file list's images decoded once, in parallel, at reduced resolution.

Layout (one folder per file list and resolution, `<root>/<name>-<size>px-<key>/`):
  shard-00000.npy   uint8 [n, size, size, 3] (memory-mapped when read), `SHARD_IMAGES` images per shard
  shard-00000.json  the files of that shard with their sizes and modification times (written after its .npy)
  index.json        the whole list, its stamps, format and resolution, and the unreadable files; written last

Each image: decoded (JPEG draft mode: the DCT scaling nearest above the target, then a bilinear resize), converted
to RGB (greyscale and CMYK included), its short side resized to `size` and the centre `size` x `size` square kept.
Trade-off of the square: RandomResizedCrop then draws its boxes inside the centre square rather than the whole
picture (a 4:3 picture loses its outer eighths left and right); every crop is resampled from at most `size` pixels,
so size=160 under a 224 crop is an upsampling (softer pictures than the paper's full-resolution crops), size=256
keeps the paper's detail at 2.56x the disk.

Reuse and checks: the folder's name depends on the resolved paths and the resolution, so a store is found again
by any run over the same files; its index must then match every file's size and modification time (and the
format and resolution).  A store whose files changed is rebuilt, and the run says so in one line.  Shards whose
own .json still matches are kept, so an interrupted build resumes where it stopped.

Writes: every .npy and .json goes to a temporary name first and is renamed into place once complete, and the
index comes last, so a folder without index.json is never read as a store.  A failing write (a full disk) raises
`ImageStoreError` naming the path; shards already completed stay.  An image that cannot be decoded raises
`ImageFileError` naming it (with skip_bad=True it is listed in the index, stored as zeros and left out by the
loader).  Builders of one folder take turns through an flock on `<folder>.lock` (DDP ranks, parallel runs).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from proxynas_fast.loaders.imagenet_base import ImageFileError

logger = logging.getLogger("proxynas_fast.loaders")

STORE_FORMAT = "uint8-rgb-centre-square-v1"
DEFAULT_STORE_SIZE = 160
SHARD_IMAGES = 2048
INDEX_NAME = "index.json"


class ImageStoreError(OSError):
    """The store cannot be written or read (a full disk, a read-only folder); the message names the path."""


def store_root() -> Path:
    """`$PROXYNAS_IMAGE_STORE`, else `image-store` under the decoded-image cache folder."""
    from proxynas_fast.data.image_cache import cache_dir

    env = os.environ.get("PROXYNAS_IMAGE_STORE")
    return Path(env) if env else cache_dir() / "image-store"


def file_stamps(files: Sequence[str]) -> list[list[int]]:
    """[size, mtime_ns] of every file; a missing file raises ImageFileError naming it."""
    stamps = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError as e:
            raise ImageFileError(f"cannot read image file {path}: {e.strerror or e}", path=path) from e
        stamps.append([int(st.st_size), int(st.st_mtime_ns)])
    return stamps


def store_folder(root: Path, files: Sequence[str], size: int, name: str = "imagenet") -> Path:
    digest = hashlib.sha256()
    digest.update(f"{STORE_FORMAT}\0{size}\0".encode())
    for path in files:
        digest.update(os.path.realpath(path).encode() + b"\0")
    return Path(root) / f"{name}-{size}px-{digest.hexdigest()[:16]}"


def decode_for_store(path: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the image's short side resized to `size`, centre square (see the module doc)."""
    with Image.open(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size
        image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)


def _decode_or_reason(path: str, size: int):
    try:
        return decode_for_store(path, size), None
    except Exception as e:  # noqa: BLE001 - every failure names the file
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        return None, f"{type(e).__name__}: {detail}"


def _write_atomically(path: Path, write: Callable) -> None:
    """write(file) into a temporary file beside `path`, then rename it into place; the temporary file goes on
    any failure.  An OSError (ENOSPC, EROFS, ...) becomes an ImageStoreError naming `path`."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=path.suffix, dir=str(path.parent))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        full = {errno.ENOSPC: " (disk full)", errno.EDQUOT: " (disk quota exceeded)",
                errno.EFBIG: " (file size limit)"}.get(e.errno, " (short write: is the disk full?)"
                                                       if e.errno is None else "")  # numpy's short write: no errno
        raise ImageStoreError(f"cannot write image store file {path}{full}: {e.strerror or e}; the shards "
                              f"already written stay and the next run resumes from them") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write_json(path: Path, data: dict) -> None:
    _write_atomically(path, lambda f: f.write(json.dumps(data).encode()))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class StoreBuild:
    """What opening a store took: seconds decoding, images decoded, images reused from finished shards."""

    seconds: float = 0.0
    decoded: int = 0
    reused: int = 0


class ImageStore:
    """The decoded images of `files` (in that order), read through memory maps; see the module doc."""

    def __init__(self, folder: Path, index: dict):
        self.folder = Path(folder)
        self.size = int(index["size"])
        self.files = list(index["files"])
        self.unreadable = dict(index.get("unreadable", {}))
        self._shards = [np.load(self.folder / shard["name"], mmap_mode="r") for shard in index["shards"]]
        self._per_shard = int(index["shard_images"])

    def __len__(self) -> int:
        return len(self.files)

    @property
    def nbytes(self) -> int:
        return sum(shard.nbytes for shard in self._shards)

    def gather(self, positions) -> np.ndarray:
        """uint8 [len(positions), size, size, 3]: the images at `positions`, in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.size, self.size, 3), dtype=np.uint8)
        shard_of, offset = np.divmod(positions, self._per_shard)
        for shard in np.unique(shard_of):
            chosen = np.nonzero(shard_of == shard)[0]
            order = np.argsort(offset[chosen], kind="stable")  # ascending offsets read the memory map in order
            out[chosen[order]] = self._shards[shard][offset[chosen][order]]
        return out


def _index_matches(index, files: list[str], stamps: list[list[int]], size: int) -> bool:
    return (isinstance(index, dict) and index.get("format") == STORE_FORMAT and index.get("size") == size
            and index.get("files") == files and index.get("stamps") == stamps and index.get("complete") is True)


def _changed_files(index: dict, files: list[str], stamps: list[list[int]]) -> str:
    """Why an index does not match (for the rebuild message)."""
    if index.get("format") != STORE_FORMAT or index.get("files") != files:
        return f"format {index.get('format')!r} or file list differ"
    changed = [f for f, old, new in zip(files, index.get("stamps", []), stamps) if old != new]
    first = f" (first: {changed[0]})" if changed else ""
    return f"{len(changed)} file(s) changed size or modification time{first}"


def open_store(files: Sequence[str], size: int = DEFAULT_STORE_SIZE, *, root: Path | None = None,
               threads: int = 1, skip_bad: bool = False, name: str = "imagenet",
               shard_images: int = SHARD_IMAGES) -> tuple[ImageStore, StoreBuild]:
    """The store of `files` at `size` px: the matching one on disk, else built (decoding on `threads` threads)."""
    files = [os.fspath(f) for f in files]
    if size < 1:
        raise ValueError(f"store size must be >= 1, got {size}")
    stamps = file_stamps(files)
    folder = store_folder(root or store_root(), files, size, name)
    index = _read_json(folder / INDEX_NAME)
    if _index_matches(index, files, stamps, size):
        return ImageStore(folder, index), StoreBuild(reused=len(files))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(str(folder) + ".lock", "a")
    except OSError as e:
        raise ImageStoreError(f"cannot create image store folder {folder.parent}: {e.strerror or e}") from e
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another builder of this folder finishes first
        index = _read_json(folder / INDEX_NAME)
        if _index_matches(index, files, stamps, size):
            return ImageStore(folder, index), StoreBuild(reused=len(files))
        if isinstance(index, dict):
            logger.warning("image store %s was built from other files (%s); rebuilding it",
                           folder, _changed_files(index, files, stamps))
        build = _build(folder, files, stamps, size, threads, skip_bad, shard_images)
        return ImageStore(folder, _read_json(folder / INDEX_NAME)), build


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ImageStoreError(f"image store {folder} needs {needed / 1e9:.2f} GB more and its disk has "
                              f"{free / 1e9:.2f} GB free (set PROXYNAS_IMAGE_STORE to a larger disk or lower "
                              f"--store-size)")


def _build(folder: Path, files: list[str], stamps: list[list[int]], size: int, threads: int, skip_bad: bool,
           shard_images: int) -> StoreBuild:
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise ImageStoreError(f"cannot create image store folder {folder}: {e.strerror or e}") from e
    with contextlib.suppress(OSError):
        (folder / INDEX_NAME).unlink()  # the old index no longer describes the shards about to change
    build = StoreBuild()
    started = time.perf_counter()
    image_bytes = size * size * 3
    shards, unreadable, todo = [], {}, []
    for first in range(0, len(files), shard_images):
        shard = {"name": f"shard-{first // shard_images:05d}.npy",
                 "files": files[first:first + shard_images], "stamps": stamps[first:first + shard_images]}
        shards.append(shard)
        manifest = _read_json(folder / shard["name"].replace(".npy", ".json"))
        expected = {"format": STORE_FORMAT, "size": size, "files": shard["files"], "stamps": shard["stamps"]}
        if (isinstance(manifest, dict) and {k: manifest.get(k) for k in expected} == expected
                and (folder / shard["name"]).is_file()):
            unreadable.update(manifest.get("unreadable", {}))
            build.reused += len(shard["files"])
        else:
            todo.append(shard)
    _check_free_space(folder, sum(len(s["files"]) for s in todo) * image_bytes)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL releases the GIL while decoding
        for shard in todo:
            images = np.zeros((len(shard["files"]), size, size, 3), dtype=np.uint8)
            bad = {}
            for i, (pixels, reason) in enumerate(pool.map(lambda p: _decode_or_reason(p, size), shard["files"])):
                if reason is not None:
                    if not skip_bad:
                        path = shard["files"][i]
                        raise ImageFileError(f"cannot decode image file {path}: {reason}", path=path)
                    bad[shard["files"][i]] = reason
                    logger.warning("skipping unreadable image file %s: %s", shard["files"][i], reason)
                else:
                    images[i] = pixels
            _write_atomically(folder / shard["name"], lambda f: np.save(f, images))
            _write_json(folder / shard["name"].replace(".npy", ".json"),
                        {"format": STORE_FORMAT, "size": size, "files": shard["files"], "stamps": shard["stamps"],
                         "unreadable": bad})
            unreadable.update(bad)
            build.decoded += len(shard["files"])
    _write_json(folder / INDEX_NAME, {"format": STORE_FORMAT, "size": size, "files": files, "stamps": stamps,
                                      "shard_images": shard_images, "unreadable": unreadable, "complete": True,
                                      "shards": [{"name": s["name"], "count": len(s["files"])} for s in shards]})
    build.seconds = time.perf_counter() - started
    logger.info("image store %s: decoded %d image(s) in %.1f s (%d reused)", folder, build.decoded, build.seconds,
                build.reused)
    return build
